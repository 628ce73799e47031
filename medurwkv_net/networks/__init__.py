"""Networks: Vision-RWKV backbone, its blocks, and the Med-URWKV segmentation U-Net."""
from .blocks import ChannelMix, PatchEmbed, PatchExpand, PatchMerge, SpatialMix, VRWKVBlock, q_shift, resize_pos_embed
from .medurwkv import MedURWKV, check_finite_input
from .volumetric import MedURWKV3D, VolumePatchEmbed, VolumePatchExpand, VRWKV3D
from .vrwkv import VRWKV, VRWKV_VARIANTS, create_vrwkv, vrwkv_base, vrwkv_small, vrwkv_tiny

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
