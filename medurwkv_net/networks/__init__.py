"""Networks: the Vision-RWKV backbone, its blocks, and the Med-URWKV segmentation U-Net (2D and 3D).

No weight loading here: :mod:`medurwkv_net.pretrained` fills networks with released weights, and
:func:`medurwkv_net.create_medurwkv` builds a network and loads them.
"""

from .blocks import ChannelMix, PatchEmbed, PatchExpand, PatchMerge, SpatialMix, VRWKVBlock, q_shift, resize_pos_embed
from .medurwkv import MedURWKV, check_finite_input
from .volume_blocks import VolumePatchEmbed, VolumePatchExpand
from .volumetric import MedURWKV3D
from .vrwkv import VRWKV, VRWKV3D, VRWKV_VARIANTS, create_vrwkv, vrwkv_base, vrwkv_small, vrwkv_tiny

__all__ = [
    "MedURWKV",
    "MedURWKV3D",
    "check_finite_input",
    "VRWKV3D",
    "VolumePatchEmbed",
    "VolumePatchExpand",
    "ChannelMix",
    "PatchEmbed",
    "PatchExpand",
    "PatchMerge",
    "SpatialMix",
    "VRWKVBlock",
    "q_shift",
    "resize_pos_embed",
    "VRWKV",
    "VRWKV_VARIANTS",
    "create_vrwkv",
    "vrwkv_base",
    "vrwkv_small",
    "vrwkv_tiny",
]
