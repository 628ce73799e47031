"""Vision-RWKV (VRWKV) backbone whose parameter names match the released OpenGVLab checkpoints, in 2D and 3D."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .blocks import PatchEmbed, VRWKVBlock, resize_grid_embed, shape_str, tokens_to_grid
from .volume_blocks import VolumePatchEmbed, as_3tuple

__all__ = [
    "VRWKV",
    "VRWKV3D",
    "VRWKV_VARIANTS",
    "vrwkv_tiny",
    "vrwkv_small",
    "vrwkv_base",
    "create_vrwkv",
    "checkpointed",
    "deprecated_checkpoint_flag",
]

#: Architectures of the released ImageNet-1K models (docs/DESIGN.md section 3). Their weights are listed in
#: :mod:`medurwkv_net.pretrained.registry`.
VRWKV_VARIANTS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(embed_dims=192, depth=12, post_norm=False, init_values=None, key_norm=False),
    "small": dict(embed_dims=384, depth=12, post_norm=True, init_values=1e-5, key_norm=False),
    "base": dict(embed_dims=768, depth=12, post_norm=True, init_values=1e-5, key_norm=False),
}

_OFFICIAL_KEYS = {"channel_gamma", "shift_pixel", "shift_mode", "init_mode", "init_cfg"}
_RESIZE_MODES = {2: ("bicubic", "bilinear", "nearest"), 3: ("trilinear", "nearest")}


def deprecated_checkpoint_flag(owner: str, old_name: str, old_value: Optional[bool], enabled: bool) -> bool:
    """Fold a deprecated gradient-checkpointing keyword into ``grad_checkpointing``.

    Args:
        owner: the class taking the keyword, for the warning.
        old_name: the deprecated keyword (``use_checkpoint``, ``with_cp``).
        old_value: its value; None when it was not passed.
        enabled: the value of ``grad_checkpointing``.

    Returns:
        whether gradient checkpointing is on (either keyword true).
    """
    if old_value is None:
        return bool(enabled)
    warnings.warn(
        f"{owner}: the keyword {old_name!r} is deprecated; pass grad_checkpointing={bool(old_value)} instead "
        "(or call set_grad_checkpointing()).",
        DeprecationWarning,
        stacklevel=3,
    )
    return bool(enabled) or bool(old_value)


@torch.jit.unused
def checkpointed(layer: nn.Module, tokens: torch.Tensor, grid: List[int]) -> torch.Tensor:
    """Run ``layer(tokens, grid)`` under non-reentrant activation checkpointing."""
    return checkpoint(layer, tokens, grid, use_reentrant=False)


class VRWKV(nn.Module):
    """Vision-RWKV backbone on images (``spatial_dims=2``) or volumes (``spatial_dims=3``).

    "Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures", Duan et al., arXiv
    2403.02308, re-implemented from the paper and docs/DESIGN.md section 3. Module paths equal those of the
    official mmcls backbone, so a released ``state_dict`` loads after stripping ``backbone.`` (see
    :func:`medurwkv_net.pretrained.load_vrwkv_weights`). The position embedding (no class token) is resized from
    the ``img_size / patch_size`` grid to the input's grid on every forward, so any input size works (the patch
    embedding pads the end of every axis to a multiple of ``patch_size``).

    In 3D the patch embedding is a ``Conv3d`` (:class:`~medurwkv_net.networks.volume_blocks.VolumePatchEmbed`,
    per-axis patch size), the position embedding lives on a 3D grid (resized trilinearly), and the blocks'
    Q-Shift splits the channels into sixths (both neighbours along each of the three axes). The parameter names
    are the 2D ones, so a 2D checkpoint fills it after :mod:`medurwkv_net.pretrained.inflate`.

    Args:
        embed_dims: channel width C.
        depth: number of blocks.
        img_size: nominal input size (an int or one int per axis); fixes the stored position-embedding grid.
        patch_size: patch edge length (2D: an int; 3D: an int or 3 ints such as ``(16, 16, 4)``).
        in_channels: input channels.
        post_norm: post-norm blocks (VRWKV-S/B) instead of pre-norm (VRWKV-T).
        init_values: layer-scale initial value (None: no ``gamma1``/``gamma2``).
        key_norm: VRWKV-L key normalisation.
        out_indices: block indices whose outputs are returned (negative counts from the end; default: the
            last block, i.e. (11,) for 12 blocks).
        final_norm: apply the top-level ``ln1`` to the output of the last block.
        drop_path_rate: stochastic depth, increasing linearly to this value over the blocks.
        drop_rate: dropout after adding the position embedding.
        hidden_rate: channel-mix hidden width multiplier.
        interpolate_mode: position-embedding resize mode (default ``bicubic`` in 2D, ``trilinear`` in 3D).
        spatial_dims: 2 (images) or 3 (volumes).
        grad_checkpointing: recompute block activations in the backward pass while training
            (see :meth:`set_grad_checkpointing`).
        kwargs: other official config keys (``channel_gamma``, ``shift_pixel``, ``shift_mode``, ``init_mode``,
            ``init_cfg``) are accepted so that a stored official config can be passed as is; values that change
            the computation are checked. The official ``with_cp`` is accepted with a DeprecationWarning.

    Examples::

        >>> net = VRWKV(embed_dims=192, depth=12, out_indices=(2, 5, 8, 11))
        >>> feats = net(torch.randn(1, 3, 224, 224))  # 4 tensors of shape [1, 192, 14, 14]
        >>> vol = VRWKV(spatial_dims=3, img_size=96, patch_size=(16, 16, 8), in_channels=1)
        >>> vol(torch.randn(1, 1, 96, 96, 64))[0].shape
        torch.Size([1, 192, 6, 6, 8])
    """

    def __init__(
        self,
        embed_dims: int = 192,
        depth: int = 12,
        img_size: Union[int, Sequence[int]] = 224,
        patch_size: Union[int, Sequence[int]] = 16,
        in_channels: int = 3,
        post_norm: bool = False,
        init_values: Optional[float] = None,
        key_norm: bool = False,
        out_indices: Union[int, Sequence[int]] = (-1,),
        final_norm: bool = True,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        hidden_rate: int = 4,
        interpolate_mode: Optional[str] = None,
        spatial_dims: int = 2,
        grad_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        for arg, val in (
            ("embed_dims", embed_dims),
            ("depth", depth),
            ("in_channels", in_channels),
            ("hidden_rate", hidden_rate),
        ):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"{name}: {arg} must be a positive int, got {val!r}.")
        if embed_dims % 4 != 0:
            raise ValueError(f"{name}: embed_dims must be divisible by 4 for Q-Shift, got {embed_dims}.")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"{name}: drop_path_rate must be in [0, 1), got {drop_path_rate}.")
        with_cp = kwargs.pop("with_cp", None)
        unknown = set(kwargs) - _OFFICIAL_KEYS
        if unknown:
            raise ValueError(f"{name}: unknown arguments {sorted(unknown)}.")
        if kwargs.get("shift_mode", "q_shift") != "q_shift":
            raise ValueError(f"{name}: only shift_mode='q_shift' is supported, got {kwargs['shift_mode']!r}.")
        if float(kwargs.get("channel_gamma", 0.25)) != 0.25:
            raise ValueError(f"{name}: only channel_gamma=0.25 is supported, got {kwargs['channel_gamma']!r}.")
        mode = interpolate_mode or _RESIZE_MODES[spatial_dims][0]
        if mode not in _RESIZE_MODES[spatial_dims]:
            raise ValueError(
                f"{name}: interpolate_mode for spatial_dims={spatial_dims} must be one of "
                f"{list(_RESIZE_MODES[spatial_dims])}, got {interpolate_mode!r}."
            )
        shift_pixel = int(kwargs.get("shift_pixel", 1))
        patch = _patch_sizes(name, spatial_dims, patch_size)
        size = _sizes(name, spatial_dims, img_size)

        self.spatial_dims = spatial_dims
        self.embed_dims = embed_dims
        self.depth = depth
        self.in_channels = in_channels
        self.patch_size: Union[int, List[int]] = patch[0] if spatial_dims == 2 else list(patch)
        self.img_size: Tuple[int, ...] = size
        self.pos_grid: List[int] = [-(-s // p) for s, p in zip(size, patch)]
        self.interpolate_mode = mode
        self.final_norm = bool(final_norm)
        self.grad_checkpointing = deprecated_checkpoint_flag(name, "with_cp", with_cp, grad_checkpointing)
        self.out_indices: List[int] = self._normalise_indices(out_indices, f"{name}: out_indices")

        if spatial_dims == 2:
            self.patch_embed: nn.Module = PatchEmbed(2, in_channels, embed_dims, patch[0])
        else:
            self.patch_embed = VolumePatchEmbed(in_channels, embed_dims, patch)
        num_patches = 1
        for g in self.pos_grid:
            num_patches *= g
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dims))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        dpr = [float(x) for x in torch.linspace(0, drop_path_rate, depth)]
        self.layers = nn.ModuleList(
            [
                VRWKVBlock(
                    embed_dims,
                    layer_id=i,
                    num_layers=depth,
                    post_norm=post_norm,
                    init_values=init_values,
                    key_norm=key_norm,
                    drop_path=dpr[i],
                    hidden_rate=hidden_rate,
                    shift_pixel=shift_pixel,
                )
                for i in range(depth)
            ]
        )
        if self.final_norm:
            self.ln1 = nn.LayerNorm(embed_dims)

    def _normalise_indices(self, indices: Union[int, Sequence[int]], what: str) -> List[int]:
        """Block indices in ``0..depth-1`` (negative ones count from the end); ValueError naming ``what``."""
        idx = [indices] if isinstance(indices, int) else list(indices)
        out = []
        for i in idx:
            j = int(i) + self.depth if int(i) < 0 else int(i)
            if not 0 <= j < self.depth:
                raise ValueError(f"{what} entry {i} is out of range for depth {self.depth}.")
            out.append(j)
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass while training (less memory, more compute).

        Args:
            enable: switch it on (True) or off (False).
        """
        self.grad_checkpointing = bool(enable)

    def _run(self, x: torch.Tensor, take: List[int]) -> Tuple[List[torch.Tensor], List[int]]:
        """Tokens ``[B, T, C]`` after each block in ``take`` (in block order) and the token grid."""
        tokens, grid = self.patch_embed(x)
        pos = resize_grid_embed(self.pos_embed, self.pos_grid, grid, self.interpolate_mode)
        tokens = self.drop_after_pos(tokens + pos.to(tokens.dtype))
        outs: List[torch.Tensor] = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if torch.jit.is_scripting():  # a scripted model runs inference: no gradient checkpointing
                tokens = layer(tokens, grid)
            elif self.grad_checkpointing and self.training and tokens.requires_grad and not torch.jit.is_tracing():
                tokens = checkpointed(layer, tokens, grid)
            else:
                tokens = layer(tokens, grid)
            if i == last and self.final_norm:
                tokens = self.ln1(tokens)
            if i in take:
                outs.append(tokens)
        return outs, grid

    def forward_tokens(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[int]]:
        """Run the backbone; returns the token outputs ``[B, T, C]`` of ``out_indices`` and the token grid."""
        return self._run(x, self.out_indices)

    def _check_input(self, x: torch.Tensor) -> None:
        layout = "[B, C, H, W]" if self.spatial_dims == 2 else "[B, C, H, W, D]"
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"{type(self).__name__} expects a {layout} input ({self.spatial_dims + 2} dims), "
                f"got shape {shape_str(x)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channels, got shape {shape_str(x)}."
            )

    @torch.jit.unused  # a variable-length tuple; scripted networks call forward_tokens
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Features of the blocks ``out_indices``.

        Args:
            x: ``[B, in_channels, H, W]`` (2D) or ``[B, in_channels, H, W, D]`` (3D).

        Returns:
            one ``[B, C, *grid]`` tensor per entry of ``out_indices``, in block order; the grid is the input size
            divided by the patch size, rounded up.
        """
        self._check_input(x)
        outs, grid = self.forward_tokens(x)
        return tuple(tokens_to_grid(o, grid) for o in outs)

    @torch.jit.unused
    def forward_intermediates(
        self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None, intermediates_only: bool = False
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of chosen blocks, timm style; the module is not changed (safe to call concurrently).

        Args:
            x: the input, as for :meth:`forward`.
            indices: block indices (negative counts from the end); an int ``n`` means the last ``n`` blocks;
                None: all blocks.
            intermediates_only: return only the intermediates.

        Returns:
            ``(final_features, intermediates)``, or only ``intermediates``: ``[B, C, *grid]`` tensors, the
            intermediates in the order of ``indices``; ``final_features`` is the last block's output after the
            final norm.
        """
        self._check_input(x)
        if indices is None:
            take = list(range(self.depth))
        elif isinstance(indices, int):
            if not 1 <= indices <= self.depth:
                raise ValueError(f"{type(self).__name__}: indices={indices} must be in 1..{self.depth} blocks.")
            take = list(range(self.depth - indices, self.depth))
        else:
            take = self._normalise_indices(indices, f"{type(self).__name__}.forward_intermediates: indices")
        run = sorted(set(take) | {self.depth - 1})
        outs, grid = self._run(x, run)
        by_idx = dict(zip(run, outs))
        inter = [tokens_to_grid(by_idx[i], grid) for i in take]
        if intermediates_only:
            return inter
        return tokens_to_grid(by_idx[self.depth - 1], grid), inter


def _patch_sizes(name: str, spatial_dims: int, patch_size: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    if spatial_dims == 3:
        return as_3tuple(patch_size, f"{name} patch_size")
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size <= 0:
        raise ValueError(f"{name}: patch_size must be a positive int in 2D, got {patch_size!r}.")
    return (patch_size, patch_size)


def _sizes(name: str, spatial_dims: int, img_size: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        out: Tuple[int, ...] = (img_size,) * spatial_dims
    else:
        try:
            out = tuple(int(v) for v in img_size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            out = ()
    if len(out) != spatial_dims or any(v <= 0 for v in out):
        raise ValueError(f"{name}: img_size must be a positive int or {spatial_dims} positive ints, got {img_size!r}.")
    return out


class VRWKV3D(VRWKV):
    """:class:`VRWKV` with ``spatial_dims=3`` and defaults for volumes (96^3 nominal size, 1 channel).

    Args:
        embed_dims: channel width C.
        depth: number of blocks.
        img_size: nominal volume size (int or 3 ints); with ``patch_size`` it fixes the stored position grid.
        patch_size: int or 3 ints (anisotropic patches, e.g. ``(16, 16, 4)``).
        in_channels: input channels.
        kwargs: the other arguments of :class:`VRWKV`; ``spatial_dims``, if given, must be 3.
    """

    def __init__(
        self,
        embed_dims: int = 192,
        depth: int = 12,
        img_size: Union[int, Sequence[int]] = 96,
        patch_size: Union[int, Sequence[int]] = 16,
        in_channels: int = 1,
        **kwargs: Any,
    ) -> None:
        spatial_dims = kwargs.pop("spatial_dims", 3)
        if spatial_dims != 3:
            raise ValueError(f"VRWKV3D: spatial_dims must be 3, got {spatial_dims!r}; use VRWKV for images.")
        super().__init__(
            embed_dims=embed_dims,
            depth=depth,
            img_size=img_size,
            patch_size=patch_size,
            in_channels=in_channels,
            spatial_dims=3,
            **kwargs,
        )


def create_vrwkv(variant: str = "tiny", **kwargs: Any) -> VRWKV:
    """Build a named variant with its published architecture.

    Args:
        variant: ``tiny``, ``small``, ``base`` (or another key of :data:`VRWKV_VARIANTS`).
        kwargs: arguments of :class:`VRWKV` (``spatial_dims``, ``in_channels``, ...), overriding the variant's.

    Returns:
        the backbone, randomly initialised (weights: :func:`medurwkv_net.pretrained.load_vrwkv_weights`).
    """
    if variant not in VRWKV_VARIANTS:
        raise ValueError(f"Unknown VRWKV variant {variant!r}; known: {sorted(VRWKV_VARIANTS)}.")
    cfg = dict(VRWKV_VARIANTS[variant])
    cfg.update(kwargs)
    return VRWKV(**cfg)


def vrwkv_tiny(**kwargs: Any) -> VRWKV:
    """VRWKV-T: 192 wide, 12 blocks, pre-norm, no layer scale (about 6.2M parameters)."""
    return create_vrwkv("tiny", **kwargs)


def vrwkv_small(**kwargs: Any) -> VRWKV:
    """VRWKV-S: 384 wide, 12 blocks, post-norm, layer scale (about 23.8M parameters)."""
    return create_vrwkv("small", **kwargs)


def vrwkv_base(**kwargs: Any) -> VRWKV:
    """VRWKV-B: 768 wide, 12 blocks, post-norm, layer scale (about 93.7M parameters)."""
    return create_vrwkv("base", **kwargs)
