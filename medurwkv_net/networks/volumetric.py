"""Volumetric (3D) Med-URWKV: a Vision-RWKV encoder on 3D patches and the Med-URWKV U-Net for volumes.

What is 3D here and what is shared with the 2D network:

- Q-Shift: :func:`medurwkv_net.networks.blocks.q_shift` with a 3-element grid ``[D0, D1, D2]``: the
  channels are split into sixths; sixths 0/1 take the previous/next token along the last axis, 2/3 along
  the middle axis, 4/5 along the first axis (six neighbours, zero padded). The VRWKV blocks
  (:class:`~medurwkv_net.networks.blocks.VRWKVBlock`), patch merging / expanding and the Bi-WKV operator are
  the 2D ones, called with a 3D grid; a block scans the ``D0 * D1 * D2`` tokens in row-major order.
- Patch embedding: :class:`VolumePatchEmbed`, a ``Conv3d`` named ``projection`` with a per-axis patch size
  (``16`` = 16^3, or anisotropic such as ``(16, 16, 4)`` for thick-slice volumes).
- Position embedding: stored on the ``img_size / patch_size`` grid and resized trilinearly
  (``align_corners=False``) to the input's grid on every forward.
- Axis convention (MONAI): a volume is ``[B, C, H, W, D]``; the first two spatial axes are the image
  plane of the 2D checkpoint and the last axis is the depth (slice) axis. ImageNet weights are inflated by
  :mod:`medurwkv_net.pretrained.inflate` with this convention.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import exporting, grid_to_tokens, shape_str
from .medurwkv import MedURWKV, _check_unet_args, _plain_tensor
from .vrwkv import VRWKV, VRWKV_VARIANTS

__all__ = ["VolumePatchEmbed", "VolumePatchExpand", "VRWKV3D", "MedURWKV3D", "as_3tuple"]

_PRETRAINED_NAMES = {"tiny": "vrwkv_t_in1k_224", "small": "vrwkv_s_in1k_224", "base": "vrwkv_b_in1k_224"}


def as_3tuple(value: Union[int, Sequence[int]], name: str, minimum: int = 1) -> Tuple[int, int, int]:
    """``value`` as three ints ``>= minimum`` (an int is repeated); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}.")
    if isinstance(value, int):
        out = (value, value, value)
    else:
        try:
            out = tuple(int(v) for v in value)  # type: ignore[union-attr]
        except TypeError as e:
            raise ValueError(f"{name} must be an int or 3 ints, got {value!r}.") from e
    if len(out) != 3 or any(v < minimum for v in out):
        raise ValueError(f"{name} must be an int or 3 ints, each >= {minimum}, got {value!r}.")
    return out  # type: ignore[return-value]


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
        self.patch_size: List[int] = list(as_3tuple(patch_size, "patch_size"))
        self.projection = nn.Conv3d(in_channels, embed_dims, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
        pads: List[int] = []
        for i in range(2, -1, -1):
            p = self.patch_size[i]
            pads += [0, (p - x.shape[2 + i] % p) % p]
        if exporting() or sum(pads) > 0:
            x = F.pad(x, pads)
        return grid_to_tokens(self.projection(x))


class VolumePatchExpand(nn.Module):
    """Learnable upsampling of a 3D token grid by a per-axis factor: ``Linear(C_in, prod(scale) * C_out)``,
    voxel shuffle, LayerNorm (the per-axis twin of :class:`~medurwkv_net.networks.blocks.PatchExpand`, whose
    factor is one int; needed for anisotropic patches).

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
        b = x.shape[0]
        s = self.scale
        y = self.expand(x).reshape([b] + grid + s + [self.out_dims])
        y = y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, -1, self.out_dims)
        return self.norm(y), [grid[0] * s[0], grid[1] * s[1], grid[2] * s[2]]


class VRWKV3D(VRWKV):
    """Vision-RWKV backbone on volumes: 3D patch embedding, 3D position embedding, blocks with a 3D Q-Shift.

    Parameter names are those of :class:`~medurwkv_net.networks.vrwkv.VRWKV` (``patch_embed.projection``,
    ``pos_embed``, ``layers.<i>``, ``ln1``), so a 2D ImageNet checkpoint fills it after
    :func:`medurwkv_net.pretrained.inflate.inflate_state_dict` (kernel repeated over depth and divided by the
    depth, position embedding replicated over depth). The forward pass is the 2D one with a 3D grid.

    Args:
        embed_dims: channel width C.
        depth: number of blocks.
        img_size: nominal volume size (int or 3 ints); with ``patch_size`` it fixes the stored position grid.
        patch_size: int or 3 ints (anisotropic patches, e.g. ``(16, 16, 4)``).
        in_channels: input channels.
        interpolate_mode: position-embedding resize mode (``trilinear`` or ``nearest``).
        kwargs: the other arguments of :class:`~medurwkv_net.networks.vrwkv.VRWKV` (``post_norm``,
            ``init_values``, ``key_norm``, ``out_indices``, ``final_norm``, ``drop_path_rate``, ``drop_rate``,
            ``hidden_rate``, ``with_cp``).

    Examples::

        >>> enc = VRWKV3D(embed_dims=192, depth=12, img_size=96, patch_size=16, in_channels=1, out_indices=(11,))
        >>> enc(torch.randn(1, 1, 96, 96, 64))[0].shape
        torch.Size([1, 192, 6, 6, 4])
    """

    def __init__(
        self,
        embed_dims: int = 192,
        depth: int = 12,
        img_size: Union[int, Sequence[int]] = 96,
        patch_size: Union[int, Sequence[int]] = 16,
        in_channels: int = 1,
        interpolate_mode: str = "trilinear",
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("spatial_dims", 3) != 3:
            raise ValueError("VRWKV3D: spatial_dims must be 3.")
        if interpolate_mode not in ("trilinear", "nearest"):
            raise ValueError(f"VRWKV3D: interpolate_mode must be 'trilinear' or 'nearest', got {interpolate_mode!r}.")
        patch = as_3tuple(patch_size, "VRWKV3D patch_size")
        size = as_3tuple(img_size, "VRWKV3D img_size")
        # build the dimension-free parts (blocks, final norm, checks) with the 2D constructor on a 1x1 grid,
        # then put the 3D patch and position embeddings in place
        super().__init__(embed_dims=embed_dims, depth=depth, img_size=1, patch_size=1, in_channels=in_channels,
                         spatial_dims=2, interpolate_mode=interpolate_mode, **kwargs)
        self.spatial_dims = 3
        self.patch_size = list(patch)  # type: ignore[assignment]
        self.img_size = size
        self.pos_grid = [-(-s // p) for s, p in zip(size, patch)]
        self.patch_embed = VolumePatchEmbed(in_channels, embed_dims, patch)  # type: ignore[assignment]
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.pos_grid), embed_dims))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @torch.jit.unused  # a variable-length tuple; scripted networks call forward_tokens
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Args:
            x: ``[B, in_channels, H, W, D]``.

        Returns:
            one ``[B, C, ceil(H/p0), ceil(W/p1), ceil(D/p2)]`` tensor per entry of ``out_indices``.
        """
        if x.ndim != 5:
            raise ValueError(f"VRWKV3D expects a [B, C, H, W, D] input (5 dims), got shape {shape_str(x)}.")
        return super().forward(x)


class MedURWKV3D(MedURWKV):
    """Med-URWKV for volumes ("Med-URWKV", arXiv 2506.10858, extended to 3D by this project).

    The 2D architecture (see :class:`~medurwkv_net.networks.medurwkv.MedURWKV`) with every token grid 3D:
    a :class:`VRWKV3D` encoder on ``patch_size`` patches (stride ``p``); the outputs of blocks
    ``out_indices`` brought to strides ``p/4, p/2, p, 2p`` by patch expanding x4 / x2, a projection and
    patch merging; a VRWKV bottleneck at ``2p``; three decoder stages (patch expanding x2, skip
    concatenation, linear fuse, VRWKV blocks) back to ``p/4``, where a ``p/4`` patch embedding of the
    volume itself is fused in (``input_skip``); a learnable ``p/4`` expansion to full resolution, the input
    voxels concatenated, and a point-wise head. Any volume size works: the input is zero padded at the end
    of every axis to a multiple of ``2 * patch_size`` and the output cropped back. With a 96^3 input and
    16^3 patches the decoder's last stage mixes 24^3 = 13,824 tokens globally at linear cost.

    Built by ``MedURWKV(spatial_dims=3, ...)`` as well; it is a :class:`MedURWKV` (``freeze_encoder``,
    ``unfreeze_encoder``, ``set_grad_checkpointing`` behave the same).

    Args:
        spatial_dims: must be 3.
        in_channels: input channels.
        out_channels: output channels (classes, logits).
        img_size: nominal volume size (int or 3 ints); sets the position-embedding grid ``img_size / patch_size``.
        encoder: VRWKV variant ``"tiny"``, ``"small"`` or ``"base"``.
        pretrained: ``False``; ``True`` for the ImageNet-1K weights of ``encoder``; or a weight source accepted by
            :func:`medurwkv_net.load_vrwkv_weights`. The 2D weights are inflated to 3D
            (:func:`medurwkv_net.pretrained.inflate.load_inflated_vrwkv_weights`).
        patch_size: encoder patch size, an int or 3 ints, each a multiple of 4 (e.g. 16, or ``(16, 16, 8)``).
        feature_size: decoder width at stride ``p/4``; widths ``feature_size * (1, 2, 4, 8)``.
        out_indices: the four encoder blocks feeding the four scales.
        bottleneck_depth: VRWKV blocks at stride ``2p``.
        decoder_depths: VRWKV blocks of the three decoder stages.
        final_dims: channels at full resolution before the head (default ``feature_size // 2``).
        input_skip: fuse the volume into the last decoder stage and the head.
        drop_path_rate: stochastic depth of bottleneck and decoder blocks.
        encoder_drop_path_rate: stochastic depth of the encoder blocks.
        use_checkpoint: gradient checkpointing of all VRWKV blocks.
        check_finite: also check every forward's input for NaN/Inf (off by default: a device synchronisation;
            see :class:`~medurwkv_net.networks.MedURWKV`).
        hf_cache_dir: Hugging Face cache directory for downloads.

    Examples::

        >>> net = MedURWKV(spatial_dims=3, in_channels=1, out_channels=3, img_size=96, pretrained=True)
        >>> net(torch.randn(1, 1, 97, 80, 45)).shape
        torch.Size([1, 3, 97, 80, 45])
        >>> thick = MedURWKV(spatial_dims=3, in_channels=1, out_channels=2, patch_size=(16, 16, 4))
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        img_size: Union[int, Sequence[int]] = 96,
        encoder: str = "tiny",
        pretrained: Union[bool, str] = False,
        feature_size: int = 48,
        out_indices: Sequence[int] = (2, 5, 8, 11),
        bottleneck_depth: int = 3,
        decoder_depths: Sequence[int] = (2, 2, 2),
        final_dims: Optional[int] = None,
        input_skip: bool = True,
        drop_path_rate: float = 0.0,
        encoder_drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        check_finite: bool = False,
        hf_cache_dir: Optional[str] = None,
        patch_size: Union[int, Sequence[int]] = 16,
    ) -> None:
        nn.Module.__init__(self)  # MedURWKV.__init__ builds the 2D layers; the 3D ones are built here
        if spatial_dims != 3:
            raise ValueError(f"MedURWKV3D: spatial_dims must be 3, got {spatial_dims!r}.")
        decoder_depths, final_dims = _check_unet_args(
            "MedURWKV3D", in_channels, out_channels, feature_size, bottleneck_depth, encoder, out_indices,
            decoder_depths, final_dims,
        )
        patch = as_3tuple(patch_size, "MedURWKV3D patch_size", minimum=4)
        if any(p % 4 for p in patch):
            raise ValueError(f"MedURWKV3D: every patch_size entry must be a multiple of 4, got {patch_size!r}.")

        self.spatial_dims = 3
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input_skip = bool(input_skip)
        self.check_finite = bool(check_finite)
        self.use_checkpoint = bool(use_checkpoint)
        self.patch_size: List[int] = list(patch)
        self.pad_multiple: List[int] = [2 * p for p in patch]
        cfg = dict(VRWKV_VARIANTS[encoder])
        self.encoder = VRWKV3D(
            img_size=img_size, patch_size=patch, in_channels=in_channels, out_indices=tuple(out_indices),
            drop_path_rate=encoder_drop_path_rate, with_cp=use_checkpoint, **cfg,
        )
        quarter = [p // 4 for p in patch]
        self._build_decoder(
            self.encoder.embed_dims, feature_size, bottleneck_depth, decoder_depths, drop_path_rate, final_dims,
            stem=VolumePatchEmbed(in_channels, feature_size, quarter) if self.input_skip else None,
            final_expand=VolumePatchExpand(feature_size, final_dims, quarter),
        )

        self.pretrained_source: Optional[str] = None
        if pretrained:
            source = _PRETRAINED_NAMES[encoder] if pretrained is True else str(pretrained)
            from medurwkv_net.pretrained.inflate import load_inflated_vrwkv_weights

            load_inflated_vrwkv_weights(self.encoder, source, strict=True, cache_dir=hf_cache_dir)
            self.pretrained_source = source

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"MedURWKV3D expects input of shape [B, C, H, W, D] (5 dims), got shape {shape_str(x)}.")
        self._check_channels(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: ``[B, in_channels, H, W, D]``, any sizes >= 1.

        Returns:
            logits ``[B, out_channels, H, W, D]``.
        """
        x = _plain_tensor(x)
        self._check_input(x)
        size = [s for s in x.shape[2:]]  # no int(): sizes stay symbolic while exporting
        pads: List[int] = []
        for i in range(2, -1, -1):
            m = self.pad_multiple[i]
            pads += [0, (size[i] + m - 1) // m * m - size[i]]  # a multiple of m, also to an exported graph
        if exporting() or sum(pads) > 0:
            x = F.pad(x, pads)
        y = self._segment(x)
        return y[:, :, : size[0], : size[1], : size[2]]
