"""Med-URWKV: pure-RWKV U-Net for medical image segmentation, for MONAI.

Entry points: :class:`MedURWKV` (the network, 2D or 3D by ``spatial_dims``; no weight loading) and
:func:`create_medurwkv` (builds it and loads ImageNet weights with ``pretrained=...``).

Public names are imported on first use, so that ``python -m medurwkv_net`` commands and bundle
subprocesses do not pay for importing the networks (and MONAI) when they do not need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "MedURWKV": ".networks.medurwkv",
    "create_medurwkv": ".pretrained.builder",
    "MedURWKV3D": ".networks.volumetric",
    "VRWKV": ".networks.vrwkv",
    "vrwkv_tiny": ".networks.vrwkv",
    "vrwkv_small": ".networks.vrwkv",
    "vrwkv_base": ".networks.vrwkv",
    "load_vrwkv_weights": ".pretrained",
    "convert_weights": ".pretrained",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    # Re-exports for type checkers and IDEs only (loaded lazily by __getattr__ at run time); the redundant
    # "X as X" aliases mark them as intentional re-exports.
    from .networks.medurwkv import MedURWKV as MedURWKV
    from .networks.volumetric import MedURWKV3D as MedURWKV3D
    from .networks.vrwkv import VRWKV as VRWKV
    from .networks.vrwkv import vrwkv_base as vrwkv_base
    from .networks.vrwkv import vrwkv_small as vrwkv_small
    from .networks.vrwkv import vrwkv_tiny as vrwkv_tiny
    from .pretrained import convert_weights as convert_weights
    from .pretrained import create_medurwkv as create_medurwkv
    from .pretrained import load_vrwkv_weights as load_vrwkv_weights


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
