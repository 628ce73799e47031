"""Exporting a Med-URWKV network: TorchScript (any input size); ONNX is :mod:`medurwkv_net.onnx_export`.

TorchScript
    ``torch.jit.script(net)`` works for :class:`~medurwkv_net.MedURWKV` (2D and 3D), so MONAI's
    ``python -m monai.bundle ckpt_export`` scripts a bundle's network as it is. The scripted model runs at
    any input size. Its Bi-WKV op is the plain-PyTorch form (:func:`medurwkv_net.ops.bi_wkv_torch`): the
    ``.ts`` file loads with ``torch.jit.load`` wherever PyTorch is installed, without ``medurwkv_net``.
    :func:`script_model` with ``wkv_kernel=True`` scripts a model that calls the compiled operator
    ``torch.ops.medurwkv.bi_wkv_forward`` instead (faster on GPU; the process that loads it must import
    ``medurwkv_net`` and be able to build the kernel).

"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Union

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from medurwkv_net.networks.blocks import SpatialMix

__all__ = ["script_model"]


def _spatial_mixes(net: nn.Module) -> List[SpatialMix]:
    from medurwkv_net.networks.blocks import SpatialMix

    return [m for m in net.modules() if isinstance(m, SpatialMix)]


def script_model(
    net: nn.Module, path: Optional[Union[str, os.PathLike]] = None, wkv_kernel: bool = False
) -> torch.jit.ScriptModule:
    """``torch.jit.script`` a network (call ``net.eval()`` first for inference); optionally save it.

    Args:
        net: a :class:`~medurwkv_net.MedURWKV` (2D or 3D) or any module built from this package's blocks.
        path: write the scripted model here (``.ts``) when given.
        wkv_kernel: call the compiled ``medurwkv::bi_wkv_forward`` operator instead of the plain-PyTorch
            Bi-WKV (see the module docstring for what loading such a model needs).

    Returns:
        the scripted module; it accepts any input size, like ``net``.
    """
    mixes = _spatial_mixes(net)
    saved = [m.wkv_kernel for m in mixes]
    try:
        for m in mixes:
            m.wkv_kernel = bool(wkv_kernel)
        scripted = torch.jit.script(net)
    finally:
        for m, value in zip(mixes, saved):
            m.wkv_kernel = value
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, os.fspath(path))
    return scripted
