"""Blocks with a per-axis size for volumes: patch embedding and patch expanding with anisotropic factors.

The 2D and isotropic blocks (:class:`~medurwkv_net.networks.blocks.PatchEmbed`,
:class:`~medurwkv_net.networks.blocks.PatchExpand`) take one int per block; thick-slice volumes need one size
per axis, e.g. ``(16, 16, 4)``. Axis convention (MONAI): a volume is ``[B, C, H, W, D]``; ``(H, W)`` is the
image plane of a 2D checkpoint and ``D`` the depth (slice) axis.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import exporting, grid_to_tokens

__all__ = ["as_3tuple", "VolumePatchEmbed", "VolumePatchExpand"]


def as_3tuple(value: Union[int, Sequence[int]], name: str, minimum: int = 1) -> Tuple[int, int, int]:
    """Return ``value`` as three ints, each ``>= minimum`` (an int is repeated).

    Args:
        value: an int or a sequence of 3 ints.
        name: what ``value`` is, for the error message.
        minimum: the smallest allowed entry.

    Returns:
        the three ints.

    Raises:
        ValueError: ``value`` is a bool, not 3 ints, or has an entry below ``minimum``; the message names ``name``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}.")
    if isinstance(value, int):
        out: Tuple[int, ...] = (value, value, value)
    else:
        try:
            out = tuple(int(v) for v in value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be an int or 3 ints, got {value!r}.") from e
    if len(out) != 3 or any(v < minimum for v in out):
        raise ValueError(f"{name} must be an int or 3 ints, each >= {minimum}, got {value!r}.")
    return out[0], out[1], out[2]


class VolumePatchEmbed(nn.Module):
    """Non-overlapping 3D patch embedding (``Conv3d`` named ``projection``) with a per-axis patch size.

    The input is zero padded at the end of every spatial axis to a multiple of the patch size.

    Args:
        in_channels: input channels.
        embed_dims: output channels.
        patch_size: an int (cubic patches) or 3 ints (e.g. ``(16, 16, 4)``).

    Examples::

        >>> emb = VolumePatchEmbed(1, 192, (16, 16, 8))
        >>> tokens, grid = emb(torch.randn(1, 1, 96, 96, 40))  # grid == [6, 6, 5], tokens [1, 180, 192]
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: Union[int, Sequence[int]]) -> None:
        super().__init__()
        patch = as_3tuple(patch_size, "patch_size")
        self.patch_size: List[int] = list(patch)
        self.projection = nn.Conv3d(in_channels, embed_dims, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
        """Embed ``x`` ``[B, C, H, W, D]``; returns tokens ``[B, T, embed_dims]`` and their grid."""
        pads: List[int] = []
        for i in range(2, -1, -1):
            p = self.patch_size[i]
            pads += [0, (p - x.shape[2 + i] % p) % p]
        if exporting() or sum(pads) > 0:
            x = F.pad(x, pads)
        return grid_to_tokens(self.projection(x))


class VolumePatchExpand(nn.Module):
    """Learnable upsampling of a 3D token grid by a per-axis factor.

    ``Linear(C_in, prod(scale) * C_out)``, voxel shuffle, LayerNorm: the per-axis twin of
    :class:`~medurwkv_net.networks.blocks.PatchExpand`, whose factor is one int.

    Args:
        in_dims: input channels.
        out_dims: output channels.
        scale: an int or 3 ints.
    """

    def __init__(self, in_dims: int, out_dims: int, scale: Union[int, Sequence[int]]) -> None:
        super().__init__()
        self.scale: List[int] = list(as_3tuple(scale, "scale"))
        self.out_dims = out_dims
        self.expand = nn.Linear(in_dims, math.prod(self.scale) * out_dims, bias=False)
        self.norm = nn.LayerNorm(out_dims)

    def forward(self, x: torch.Tensor, grid: List[int]) -> Tuple[torch.Tensor, List[int]]:
        """Expand tokens ``[B, T, in_dims]`` on ``grid``; returns the tokens and the grid scaled per axis."""
        b = x.shape[0]
        s = self.scale
        y = self.expand(x).reshape([b] + grid + s + [self.out_dims])
        y = y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, -1, self.out_dims)
        return self.norm(y), [grid[0] * s[0], grid[1] * s[1], grid[2] * s[2]]
