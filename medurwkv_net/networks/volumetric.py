"""Names of the 3D network kept from earlier releases.

:class:`~medurwkv_net.networks.medurwkv.MedURWKV` with ``spatial_dims=3`` is the volumetric network (the one
documented entry point); :class:`MedURWKV3D` is that class with ``spatial_dims=3`` as its default, for code
written against earlier releases. The 3D blocks live in :mod:`medurwkv_net.networks.volume_blocks` and the 3D
encoder is :class:`~medurwkv_net.networks.vrwkv.VRWKV` with ``spatial_dims=3`` (:class:`VRWKV3D`).
"""

from __future__ import annotations

from typing import Any

from .medurwkv import MedURWKV
from .volume_blocks import VolumePatchEmbed, VolumePatchExpand, as_3tuple
from .vrwkv import VRWKV3D

__all__ = ["MedURWKV3D", "VRWKV3D", "VolumePatchEmbed", "VolumePatchExpand", "as_3tuple"]


class MedURWKV3D(MedURWKV):
    """:class:`~medurwkv_net.networks.medurwkv.MedURWKV` with ``spatial_dims=3`` by default.

    ``MedURWKV3D(...)`` builds the same network, with the same parameter names, as
    ``MedURWKV(spatial_dims=3, ...)``; prefer the latter.

    Args:
        spatial_dims: must be 3.
        kwargs: the arguments of :class:`~medurwkv_net.networks.medurwkv.MedURWKV`.
    """

    def __init__(self, spatial_dims: int = 3, *args: Any, **kwargs: Any) -> None:
        if spatial_dims != 3:
            raise ValueError(f"MedURWKV3D: spatial_dims must be 3, got {spatial_dims!r}; use MedURWKV for images.")
        super().__init__(3, *args, **kwargs)
