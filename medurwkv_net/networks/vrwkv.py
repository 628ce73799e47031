"""Vision-RWKV (VRWKV) backbone whose parameter names match the released OpenGVLab checkpoints."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .blocks import PatchEmbed, VRWKVBlock, resize_grid_embed, shape_str, tokens_to_grid

__all__ = ["VRWKV", "VRWKV_VARIANTS", "vrwkv_tiny", "vrwkv_small", "vrwkv_base", "create_vrwkv"]

#: Published settings of the released ImageNet-1K models (docs/DESIGN.md section 3).
VRWKV_VARIANTS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(embed_dims=192, depth=12, post_norm=False, init_values=None, key_norm=False),
    "small": dict(embed_dims=384, depth=12, post_norm=True, init_values=1e-5, key_norm=False),
    "base": dict(embed_dims=768, depth=12, post_norm=True, init_values=1e-5, key_norm=False),
}


def _as_tuple(value: Union[int, Sequence[int]], n: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        out = (value,) * n
    else:
        out = tuple(int(v) for v in value)
    if len(out) != n or any(v <= 0 for v in out):
        raise ValueError(f"{name} must be a positive int or a sequence of {n} positive ints, got {value!r}.")
    return out


@torch.jit.unused
def _checkpointed(layer: nn.Module, tokens: torch.Tensor, grid: List[int]) -> torch.Tensor:
    return checkpoint(layer, tokens, grid, use_reentrant=False)


class VRWKV(nn.Module):
    """Vision-RWKV backbone ("Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures",
    Duan et al., arXiv 2403.02308), re-implemented from the paper and docs/DESIGN.md section 3.

    Module paths equal those of the official mmcls backbone, so a released ``state_dict`` loads after
    stripping ``backbone.`` (see :func:`medurwkv_net.load_vrwkv_weights`). The position embedding
    (no class token) is resized bicubically from the ``img_size / patch_size`` grid to the input's grid on
    every forward, so any input size works (the patch embedding pads bottom/right to a multiple of
    ``patch_size``).

    Args:
        embed_dims: channel width C.
        depth: number of blocks.
        img_size: nominal image size; fixes the stored position-embedding grid.
        patch_size: patch edge length.
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
        interpolate_mode: position-embedding resize mode.
        spatial_dims: only 2 is implemented.
        with_cp: gradient checkpointing of the blocks while training.
        kwargs: other official config keys (``channel_gamma``, ``shift_pixel``, ``shift_mode``, ``init_mode``,
            ``init_cfg``) are accepted so that a stored official config can be passed as is; values that change
            the computation are checked.

    Examples::

        >>> net = VRWKV(embed_dims=192, depth=12, out_indices=(2, 5, 8, 11))
        >>> feats = net(torch.randn(1, 3, 224, 224))  # 4 tensors of shape [1, 192, 14, 14]
    """

    def __init__(
        self,
        embed_dims: int = 192,
        depth: int = 12,
        img_size: Union[int, Sequence[int]] = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        post_norm: bool = False,
        init_values: Optional[float] = None,
        key_norm: bool = False,
        out_indices: Union[int, Sequence[int]] = (-1,),
        final_norm: bool = True,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        hidden_rate: int = 4,
        interpolate_mode: str = "bicubic",
        spatial_dims: int = 2,
        with_cp: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if spatial_dims == 3:
            raise NotImplementedError("VRWKV is the 2D encoder (spatial_dims=2); for spatial_dims=3 use VRWKV3D.")
        if spatial_dims != 2:
            raise ValueError(f"VRWKV: spatial_dims must be 2, got {spatial_dims}.")
        for name, val in (("embed_dims", embed_dims), ("depth", depth), ("patch_size", patch_size),
                          ("in_channels", in_channels), ("hidden_rate", hidden_rate)):
            if not isinstance(val, int) or val <= 0:
                raise ValueError(f"VRWKV: {name} must be a positive int, got {val!r}.")
        if embed_dims % 4 != 0:
            raise ValueError(f"VRWKV: embed_dims must be divisible by 4 for Q-Shift, got {embed_dims}.")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"VRWKV: drop_path_rate must be in [0, 1), got {drop_path_rate}.")
        unknown = set(kwargs) - {"channel_gamma", "shift_pixel", "shift_mode", "init_mode", "init_cfg"}
        if unknown:
            raise ValueError(f"VRWKV: unknown arguments {sorted(unknown)}.")
        if kwargs.get("shift_mode", "q_shift") != "q_shift":
            raise ValueError(f"VRWKV: only shift_mode='q_shift' is supported, got {kwargs['shift_mode']!r}.")
        if float(kwargs.get("channel_gamma", 0.25)) != 0.25:
            raise ValueError(f"VRWKV: only channel_gamma=0.25 is supported, got {kwargs['channel_gamma']!r}.")
        shift_pixel = int(kwargs.get("shift_pixel", 1))

        self.spatial_dims = spatial_dims
        self.embed_dims = embed_dims
        self.depth = depth
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.img_size = _as_tuple(img_size, spatial_dims, "img_size")
        self.pos_grid: List[int] = [-(-s // patch_size) for s in self.img_size]
        self.interpolate_mode = interpolate_mode
        self.final_norm = bool(final_norm)
        self.with_cp = bool(with_cp)
        idx = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        norm_idx = []
        for i in idx:
            j = int(i) + depth if int(i) < 0 else int(i)
            if not 0 <= j < depth:
                raise ValueError(f"VRWKV: out_indices entry {i} is out of range for depth {depth}.")
            norm_idx.append(j)
        self.out_indices: List[int] = norm_idx

        self.patch_embed = PatchEmbed(spatial_dims, in_channels, embed_dims, patch_size)
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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (saves memory while training)."""
        self.with_cp = bool(enable)

    def forward_tokens(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[int]]:
        """Run the backbone; returns the token outputs ``[B, T, C]`` of ``out_indices`` and the token grid."""
        tokens, grid = self.patch_embed(x)
        pos = resize_grid_embed(self.pos_embed, self.pos_grid, grid, self.interpolate_mode)
        tokens = self.drop_after_pos(tokens + pos.to(tokens.dtype))
        outs: List[torch.Tensor] = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if torch.jit.is_scripting():  # a scripted model runs inference: no gradient checkpointing
                tokens = layer(tokens, grid)
            elif self.with_cp and self.training and tokens.requires_grad and not torch.jit.is_tracing():
                tokens = _checkpointed(layer, tokens, grid)
            else:
                tokens = layer(tokens, grid)
            if i == last and self.final_norm:
                tokens = self.ln1(tokens)
            if i in self.out_indices:
                outs.append(tokens)
        return outs, grid

    @torch.jit.unused  # a variable-length tuple; scripted networks call forward_tokens
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Args:
            x: ``[B, in_channels, H, W]``.

        Returns:
            one ``[B, C, ceil(H/16), ceil(W/16)]`` tensor per entry of ``out_indices``, in block order.
        """
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"VRWKV expects a [B, C, H, W] input ({self.spatial_dims + 2} dims), got shape {shape_str(x)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"VRWKV expects {self.in_channels} input channels, got shape {shape_str(x)}.")
        outs, grid = self.forward_tokens(x)
        return tuple(tokens_to_grid(o, grid) for o in outs)

    def forward_intermediates(
        self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None, intermediates_only: bool = False
    ):
        """timm-style: features of the blocks in ``indices`` (an int n means the last n blocks; default: all),
        as ``[B, C, h, w]``. Returns ``(final_normed_features, intermediates)`` or only the intermediates.
        """
        if indices is None:
            take = list(range(self.depth))
        elif isinstance(indices, int):
            take = list(range(self.depth - indices, self.depth))
        else:
            take = [i + self.depth if i < 0 else i for i in indices]
        saved = self.out_indices
        try:
            self.out_indices = sorted(set(take) | {self.depth - 1})
            outs, grid = self.forward_tokens(x)
        finally:
            self.out_indices = saved
        by_idx = dict(zip(sorted(set(take) | {self.depth - 1}), outs))
        inter = [tokens_to_grid(by_idx[i], grid) for i in take]
        if intermediates_only:
            return inter
        return tokens_to_grid(by_idx[self.depth - 1], grid), inter


def create_vrwkv(variant: str = "tiny", **kwargs: Any) -> VRWKV:
    """Build a named variant (``tiny``, ``small``, ``base``) with the published settings; kwargs override."""
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
