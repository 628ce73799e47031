"""Med-URWKV: pure-RWKV U-Net for medical image segmentation, for MONAI."""
__version__ = "0.1.0"
