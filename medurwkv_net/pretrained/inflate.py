"""Inflating 2D Vision-RWKV (ImageNet) weights to the 3D encoder (``VRWKV(spatial_dims=3)``).

Axis convention: a volume is ``[B, C, H, W, D]``; the 2D image plane is ``(H, W)`` and ``D`` is the depth.

Rules (:func:`inflate_state_dict`):

- ``patch_embed.projection.weight`` ``[C, 3, kh, kw]``: first adapted to the model's input channels
  (:func:`medurwkv_net.pretrained.adapt_input_conv`); if the in-plane patch ``(ph, pw)`` differs from
  ``(kh, kw)`` the kernel is resized bicubically and multiplied by ``kh * kw / (ph * pw)`` (a constant image
  keeps its response); then it is repeated ``pd`` times along depth and divided by ``pd``:
  ``W3[..., i, j, t] = W2[..., i, j] / pd``. The bias is copied. Hence a volume made of ``pd`` identical
  slices ``I`` gives exactly the 2D patch embedding of ``I`` (the identity the tests check).
- ``pos_embed`` ``[1, 14 * 14, C]``: resized bicubically (``align_corners=False``) to the in-plane grid
  ``(gh, gw)`` of the model's position grid, then replicated over its ``gd`` depth positions, so every
  slice of tokens gets the 2D embedding.
- every other tensor (blocks, norms) has no spatial extent and is copied unchanged.

Note that the 3D Q-Shift assigns channel sixths (depth, width, height neighbours) where the 2D one assigns
quarters (width, height), so the inflated blocks start from ImageNet weights but see a differently shifted
input in part of their channels; fine-tuning adapts them (the inflation is an initialisation, as in I3D).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..networks.blocks import resize_pos_embed
from .weights import (
    LoadReport,
    adapt_input_conv,
    checkpoint_filter_fn,
    load_checkpoint,
    load_vrwkv_weights,
    resolve_source,
)

__all__ = ["inflate_patch_weight", "inflate_pos_embed", "inflate_state_dict", "load_inflated_vrwkv_weights"]

_PATCH_KEY = "patch_embed.projection.weight"


def inflate_patch_weight(weight: torch.Tensor, patch_size: tuple) -> torch.Tensor:
    """Inflate a 2D patch kernel ``[C, Cin, kh, kw]`` to a 3D kernel ``[C, Cin, ph, pw, pd]`` (module rules).

    Args:
        weight: 2D convolution weight.
        patch_size: the 3D patch ``(ph, pw, pd)``.

    Examples::

        >>> w3 = inflate_patch_weight(torch.randn(192, 1, 16, 16), (16, 16, 4))  # [192, 1, 16, 16, 4]
    """
    if weight.ndim != 4:
        raise ValueError(
            f"inflate_patch_weight: expected a 2D kernel [C, Cin, kh, kw], got shape {tuple(weight.shape)}."
        )
    if len(patch_size) != 3 or any(int(p) < 1 for p in patch_size):
        raise ValueError(f"inflate_patch_weight: patch_size must be 3 positive ints, got {patch_size!r}.")
    ph, pw, pd = (int(p) for p in patch_size)
    dtype = weight.dtype
    w = weight.float()
    kh, kw = int(w.shape[2]), int(w.shape[3])
    if (kh, kw) != (ph, pw):
        w = F.interpolate(w, size=(ph, pw), mode="bicubic", align_corners=False) * (kh * kw / (ph * pw))
    return (w.unsqueeze(-1).expand(-1, -1, -1, -1, pd) / pd).contiguous().to(dtype)


def inflate_pos_embed(pos_embed: torch.Tensor, grid: tuple) -> torch.Tensor:
    """Inflate a square 2D position embedding ``[1, n * n, C]`` to the 3D grid ``(gh, gw, gd)`` (module rules)."""
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"inflate_pos_embed: expected pos_embed [1, N, C], got shape {tuple(pos_embed.shape)}.")
    n = int(round(math.sqrt(pos_embed.shape[1])))
    if n * n != pos_embed.shape[1]:
        raise ValueError(f"inflate_pos_embed: pos_embed {tuple(pos_embed.shape)} is not a square 2D grid.")
    if len(grid) != 3 or any(int(g) < 1 for g in grid):
        raise ValueError(f"inflate_pos_embed: grid must be 3 positive ints, got {grid!r}.")
    gh, gw, gd = (int(g) for g in grid)
    plane = resize_pos_embed(pos_embed, [n, n], [gh, gw], "bicubic")  # [1, gh * gw, C]
    c = plane.shape[-1]
    return plane.reshape(1, gh, gw, 1, c).expand(1, gh, gw, gd, c).reshape(1, gh * gw * gd, c).contiguous()


def inflate_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """A 2D Vision-RWKV state dict (released checkpoint; ``backbone.``/``head.`` handled) for a 3D encoder.

    Args:
        state_dict: a released checkpoint or a VRWKV state dict.
        model: a 3D encoder (:class:`~medurwkv_net.networks.vrwkv.VRWKV`, ``spatial_dims=3``) or a module holding
            one as ``encoder``.

    Returns:
        the state dict with the patch kernel and position embedding inflated; other entries unchanged.
    """
    enc: Any = getattr(model, "encoder", model)
    if getattr(enc, "spatial_dims", None) != 3 or not hasattr(enc, "pos_grid"):
        raise ValueError(
            f"inflate_state_dict: the model must be a 3D VRWKV (spatial_dims=3) or hold one as .encoder, got "
            f"{type(model).__name__}."
        )
    sd = checkpoint_filter_fn(state_dict)
    w = sd.get(_PATCH_KEY)
    if w is not None and w.ndim == 4:
        w = adapt_input_conv(w, int(enc.in_channels))
        sd[_PATCH_KEY] = inflate_patch_weight(w, tuple(enc.patch_embed.patch_size))
    pos = sd.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[-1] == enc.pos_embed.shape[-1]:
        sd["pos_embed"] = inflate_pos_embed(pos, tuple(enc.pos_grid))
    return sd


def load_inflated_vrwkv_weights(
    model: nn.Module,
    source: Union[str, os.PathLike],
    strict: bool = True,
    cache_dir: Optional[str] = None,
    sha256: Optional[str] = None,
) -> LoadReport:
    """Load 2D Vision-RWKV weights into a 3D encoder, inflated by the module rules.

    ``source`` is anything :func:`medurwkv_net.load_vrwkv_weights` accepts (local file, ``hf://...``, registry
    name); key checking and reporting are that function's (the inflated weights are handed to it).

    Args:
        model: a 3D encoder (:class:`~medurwkv_net.networks.vrwkv.VRWKV`, ``spatial_dims=3``) or a 3D ``MedURWKV``.
        source: weight source.
        strict: raise ValueError on any missing / unexpected / mis-shaped key.
        cache_dir: Hugging Face cache directory.
        sha256: expected SHA-256 of the file.

    Examples::

        >>> net = MedURWKV(spatial_dims=3, in_channels=1, out_channels=2)
        >>> load_inflated_vrwkv_weights(net, "vrwkv_t_in1k_224")
    """
    path, known_sha = resolve_source(source, cache_dir=cache_dir)
    sd = inflate_state_dict(load_checkpoint(path, sha256=sha256 or known_sha), model)
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="medurwkv_inflate_") as tmp:
        inflated = os.path.join(tmp, os.path.basename(os.fspath(path)).rsplit(".", 1)[0] + "_3d.safetensors")
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, inflated)
        try:
            report = load_vrwkv_weights(getattr(model, "encoder", model), inflated, strict=strict)
        except ValueError as e:
            raise ValueError(str(e).replace(inflated, f"{path} (inflated to 3D)")) from None
    return report._replace(source=str(path))
