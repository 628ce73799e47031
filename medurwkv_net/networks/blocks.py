"""Vision-RWKV building blocks: Q-Shift, spatial mix, channel mix, block, patch embedding and resizing.

All token tensors are channel-last ``[B, T, C]`` with ``T = prod(grid)`` in row-major order of the spatial
grid (``grid`` is ``[H, W]`` in 2D, ``[D, H, W]`` in 3D). The semantics follow docs/DESIGN.md section 3;
parameter names match the released Vision-RWKV checkpoints so that a state dict loads without renaming.
The helpers take the grid as a list so that 3D versions only need a new spatial_dims value, not new code.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import DropPath

from medurwkv_net.ops import bi_wkv

__all__ = [
    "exporting",
    "q_shift",
    "resize_pos_embed",
    "resize_grid_embed",
    "shape_str",
    "PatchEmbed",
    "SpatialMix",
    "ChannelMix",
    "VRWKVBlock",
    "PatchExpand",
    "PatchMerge",
    "tokens_to_grid",
    "grid_to_tokens",
]


def exporting() -> bool:
    """True while ``torch.export`` (and so ``torch.onnx.export(..., dynamo=True)``) traces the model.

    Shape code takes the branch that is valid for every input size then (e.g. pad even by 0), so that no
    Python decision on a symbolic size is baked into the exported graph. False when scripted or eager.
    """
    if torch.jit.is_scripting():
        return False
    return _exporting_eager()


@torch.jit.unused
def _exporting_eager() -> bool:
    return torch.compiler.is_exporting()


def _shift_along(x: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """out[i] = x[i - offset] along ``dim`` with zero fill (offset > 0 takes the previous element)."""
    size = x.shape[dim]
    n = min(abs(offset), size)
    zshape = list(x.shape)
    zshape[dim] = n
    zeros = x.new_zeros(zshape)
    if offset > 0:
        return torch.cat([zeros, x.narrow(dim, 0, size - n)], dim=dim)
    return torch.cat([x.narrow(dim, n, size - n), zeros], dim=dim)


def q_shift(x: torch.Tensor, grid: List[int], shift_pixel: int = 1) -> torch.Tensor:
    """Quad-directional token shift of Vision-RWKV, generalised to any number of spatial axes.

    The channels are split into ``2 * len(grid)`` equal groups. Going from the last spatial axis to the
    first, one group takes the previous element along that axis and the next group the following one
    (zero fill at the border). In 2D this is: channels ``[0, C/4)`` take ``x[h, w-1]``, ``[C/4, C/2)``
    take ``x[h, w+1]``, ``[C/2, 3C/4)`` take ``x[h-1, w]`` and ``[3C/4, C)`` take ``x[h+1, w]``.

    Args:
        x: tokens ``[B, T, C]``, ``T == prod(grid)``.
        grid: spatial grid shape, e.g. ``[H, W]`` (2D) or ``[D, H, W]`` (3D).
        shift_pixel: shift distance in grid cells.

    Returns:
        shifted tokens, same shape as ``x``.
    """
    b, t, c = x.shape
    nd = len(grid)
    xs = x.reshape([b] + grid + [c])
    ngroups = 2 * nd
    parts: List[torch.Tensor] = []
    g = 0
    for axis in range(nd - 1, -1, -1):
        for direction in (1, -1):
            lo = c * g // ngroups
            hi = c * (g + 1) // ngroups
            parts.append(_shift_along(xs[..., lo:hi], axis + 1, direction * shift_pixel))
            g += 1
    return torch.cat(parts, dim=-1).reshape(b, t, c)


def shape_str(x: torch.Tensor) -> str:
    """``x``'s shape as ``(1, 3, 32, 32)`` for messages (usable in TorchScript, unlike ``tuple(x.shape)``)."""
    dims = [str(int(s)) for s in x.shape]
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


def resize_pos_embed(
    pos_embed: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resize a ``[1, prod(src_grid), C]`` position embedding (no class token) to ``dst_grid``.

    Uses ``align_corners=False`` like the official backbone; returns the input unchanged when the grids match.
    ``bicubic`` is 2D only; for a 3D grid use ``trilinear``.
    """
    return resize_grid_embed(pos_embed, [int(s) for s in src_grid], [int(s) for s in dst_grid], mode)


def resize_grid_embed(pos_embed: torch.Tensor, src: List[int], dst: List[int], mode: str) -> torch.Tensor:
    """:func:`resize_pos_embed` with the grids as lists of ints (the form TorchScript compiles)."""
    n = 1
    for s in src:
        n *= s
    if pos_embed.dim() != 3 or pos_embed.shape[1] != n:
        raise ValueError(
            f"pos_embed of shape {shape_str(pos_embed)} does not match a grid of {src} (expected [1, {n}, C])."
        )
    if not exporting() and src == dst:  # exported: always resized (the identity at the stored grid)
        return pos_embed
    c = pos_embed.shape[-1]
    nd = len(src)
    grid = pos_embed.reshape([1] + src + [c]).permute([0, nd + 1] + list(range(1, nd + 1)))
    align: Optional[bool] = None if mode in ("nearest", "area", "nearest-exact") else False
    grid = F.interpolate(grid.float(), size=dst, mode=mode, align_corners=align).to(pos_embed.dtype)
    return grid.flatten(2).transpose(1, 2)


def tokens_to_grid(x: torch.Tensor, grid: List[int]) -> torch.Tensor:
    """``[B, T, C]`` tokens to a channel-first ``[B, C, *grid]`` tensor."""
    return x.transpose(1, 2).reshape([x.shape[0], x.shape[2]] + grid)


def grid_to_tokens(x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """Channel-first ``[B, C, *grid]`` tensor to ``([B, T, C], grid)``."""
    grid = [s for s in x.shape[2:]]  # no int(): sizes stay symbolic while exporting
    return x.flatten(2).transpose(1, 2), grid


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (a strided convolution named ``projection``).

    Pads the bottom/right (and back, in 3D) with zeros to a multiple of ``patch_size`` first.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        embed_dims: output channels.
        patch_size: patch edge length.
    """

    def __init__(self, spatial_dims: int, in_channels: int, embed_dims: int, patch_size: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.patch_size = int(patch_size)
        self.projection = conv(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
        """Embed an image into tokens.

        Args:
            x: ``[B, C, *spatial]``.

        Returns:
            the tokens ``[B, N, embed_dims]`` and their grid (spatial size / ``patch_size``, rounded up).
        """
        p = self.patch_size
        pads: List[int] = []
        for i in range(x.dim() - 1, 1, -1):  # last spatial axis first, as F.pad expects
            pads += [0, (p - x.shape[i] % p) % p]
        if exporting() or sum(pads) > 0:
            x = F.pad(x, pads)
        return grid_to_tokens(self.projection(x))


def _layer_ratios(layer_id: int, num_layers: int) -> Tuple[float, float]:
    ratio_0_to_1 = layer_id / max(num_layers - 1, 1)
    ratio_1_to_0 = 1.0 - layer_id / max(num_layers, 1)
    return ratio_0_to_1, ratio_1_to_0


class SpatialMix(nn.Module):
    """Bidirectional WKV token mixing (the ``att`` sub-module of a block).

    ``out = output(sigmoid(r) * [key_norm](BiWKV(spatial_decay / T, spatial_first / T, k, v)))`` where
    ``k, v, r`` are bias-free linear maps of the Q-shifted interpolations ``x * mu + shift(x) * (1 - mu)``.

    Args:
        embed_dims: channel count C.
        layer_id: index of the block (used only for initialisation).
        num_layers: number of blocks in the stack (used only for initialisation).
        key_norm: LayerNorm on the WKV output before the receptance gate (VRWKV-L).
        shift_pixel: Q-Shift distance.

    Scripted (``torch.jit.script``), the Bi-WKV op runs its plain-PyTorch form (:func:`bi_wkv` compiles to
    :func:`~medurwkv_net.ops.bi_wkv_torch`), so the scripted model needs nothing but PyTorch to load and run.
    With ``wkv_kernel = True`` set before scripting (see :func:`medurwkv_net.export.script_model`) the
    scripted model calls the compiled operator ``torch.ops.medurwkv.bi_wkv_forward`` instead (faster; it
    needs ``medurwkv_net`` imported and its kernel built wherever the scripted model is loaded).
    """

    __constants__ = ["wkv_kernel"]

    def __init__(
        self, embed_dims: int, layer_id: int = 0, num_layers: int = 1, key_norm: bool = False, shift_pixel: int = 1
    ) -> None:
        super().__init__()
        c = embed_dims
        self.shift_pixel = shift_pixel
        self.wkv_kernel = False
        self.spatial_decay = nn.Parameter(torch.zeros(c))
        self.spatial_first = nn.Parameter(torch.zeros(c))
        self.spatial_mix_k = nn.Parameter(torch.ones(1, 1, c))
        self.spatial_mix_v = nn.Parameter(torch.ones(1, 1, c))
        self.spatial_mix_r = nn.Parameter(torch.ones(1, 1, c))
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.key_norm = nn.LayerNorm(c) if key_norm else nn.Identity()
        self.output = nn.Linear(c, c, bias=False)
        self._init_mixing(layer_id, num_layers)

    @torch.no_grad()
    def _init_mixing(self, layer_id: int, num_layers: int) -> None:
        # Our initialisation: decay rates spread over channels (later layers reach stronger decay), a small
        # bonus for the current token, and per-channel mixing ratios ramping from shifted to current token.
        c = self.spatial_decay.numel()
        r01, r10 = _layer_ratios(layer_id, num_layers)
        pos = torch.arange(c, dtype=torch.float32) / max(c - 1, 1)
        self.spatial_decay.copy_(-4.0 + 10.0 * pos ** (0.5 + r01))
        self.spatial_first.copy_(math.log(0.3) + 0.5 * (torch.arange(c) % 3 - 1).float())
        ramp = (torch.arange(c, dtype=torch.float32) / c) ** r10
        self.spatial_mix_k.copy_(ramp.view(1, 1, c))
        self.spatial_mix_v.copy_((ramp + 0.3 * r01).clamp(max=1.0).view(1, 1, c))
        self.spatial_mix_r.copy_((0.5 * ramp).view(1, 1, c))

    def forward(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:
        """Mix the tokens over the grid.

        Args:
            x: tokens ``[B, N, C]``.
            grid: their token grid (its product is N).

        Returns:
            tokens ``[B, N, C]``.
        """
        t = x.shape[1]
        xx = q_shift(x, grid, self.shift_pixel)
        dx = x - xx  # x * mu + xx * (1 - mu) == xx + (x - xx) * mu
        xk = torch.addcmul(xx, dx, self.spatial_mix_k)
        xv = torch.addcmul(xx, dx, self.spatial_mix_v)
        xr = torch.addcmul(xx, dx, self.spatial_mix_r)
        k = self.key(xk)
        v = self.value(xv)
        sr = torch.sigmoid(self.receptance(xr))
        w = self.spatial_decay / t
        u = self.spatial_first / t
        if self.wkv_kernel:  # a constant: the scripted graph holds one of the two calls
            if torch.jit.is_scripting():
                acc = torch.float64 if k.dtype == torch.float64 else torch.float32
                y = torch.ops.medurwkv.bi_wkv_forward(
                    w.to(acc).contiguous(), u.to(acc).contiguous(), k.contiguous(), v.contiguous()
                )[0]
            else:
                y = bi_wkv(w, u, k, v)
        else:
            y = bi_wkv(w, u, k, v)
        y = self.key_norm(y.to(sr.dtype))
        return self.output(sr * y)


class ChannelMix(nn.Module):
    """Channel mixing (the ``ffn`` sub-module): ``sigmoid(receptance(x_r)) * value([key_norm](relu(key(x_k))^2))``.

    Args:
        embed_dims: channel count C.
        layer_id: index of the block (initialisation only).
        num_layers: blocks in the stack (initialisation only).
        hidden_rate: hidden width multiplier (4 in all released models).
        key_norm: LayerNorm on ``relu(key)^2`` (VRWKV-L).
        shift_pixel: Q-Shift distance.
    """

    def __init__(
        self,
        embed_dims: int,
        layer_id: int = 0,
        num_layers: int = 1,
        hidden_rate: int = 4,
        key_norm: bool = False,
        shift_pixel: int = 1,
    ) -> None:
        super().__init__()
        c = embed_dims
        hidden = int(hidden_rate * c)
        self.shift_pixel = shift_pixel
        self.spatial_mix_k = nn.Parameter(torch.ones(1, 1, c))
        self.spatial_mix_r = nn.Parameter(torch.ones(1, 1, c))
        self.key = nn.Linear(c, hidden, bias=False)
        self.key_norm = nn.LayerNorm(hidden) if key_norm else nn.Identity()
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(hidden, c, bias=False)
        with torch.no_grad():
            _, r10 = _layer_ratios(layer_id, num_layers)
            ramp = ((torch.arange(c, dtype=torch.float32) / c) ** r10).view(1, 1, c)
            self.spatial_mix_k.copy_(ramp)
            self.spatial_mix_r.copy_(ramp)

    def forward(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:
        """Mix the channels of each token (with its shifted neighbours).

        Args:
            x: tokens ``[B, N, C]``.
            grid: their token grid (its product is N).

        Returns:
            tokens ``[B, N, C]``.
        """
        xx = q_shift(x, grid, self.shift_pixel)
        dx = x - xx
        xk = torch.addcmul(xx, dx, self.spatial_mix_k)
        xr = torch.addcmul(xx, dx, self.spatial_mix_r)
        k = torch.square(torch.relu(self.key(xk)))
        k = self.key_norm(k)
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class VRWKVBlock(nn.Module):
    """One Vision-RWKV block (``layers.<i>`` of the backbone).

    Pre-norm: ``x += g1 * att(ln1(x)); x += g2 * ffn(ln2(x))``. Post-norm: ``x += g1 * ln1(att(x));
    x += g2 * ln2(ffn(x))``. ``g1``/``g2`` (``gamma1``/``gamma2``) exist only with layer scale
    (``init_values`` not None). With ``use_ln0`` (block 0 of the backbone) ``ln0`` normalises the input first.

    Args:
        embed_dims: channel count.
        layer_id: block index (initialisation; 0 also enables ``ln0`` unless ``use_ln0`` is given).
        num_layers: number of blocks in the stack.
        post_norm: post-norm (VRWKV-S/B) instead of pre-norm (VRWKV-T).
        init_values: layer scale initial value, or None for no layer scale.
        key_norm: VRWKV-L key normalisation.
        drop_path: stochastic depth rate of this block.
        hidden_rate: channel-mix hidden width multiplier.
        use_ln0: apply ``ln0`` to the input; defaults to ``layer_id == 0``.
    """

    # constants for TorchScript: the branches on them are resolved when scripting, so the modules and
    # parameters that exist only with a switch on (``ln0``, ``gamma1``/``gamma2``) may be absent
    __constants__ = ["use_ln0", "post_norm", "layer_scale"]

    def __init__(
        self,
        embed_dims: int,
        layer_id: int = 0,
        num_layers: int = 1,
        post_norm: bool = False,
        init_values: Optional[float] = None,
        key_norm: bool = False,
        drop_path: float = 0.0,
        hidden_rate: int = 4,
        use_ln0: Optional[bool] = None,
        shift_pixel: int = 1,
    ) -> None:
        super().__init__()
        self.use_ln0 = (layer_id == 0) if use_ln0 is None else bool(use_ln0)
        self.post_norm = bool(post_norm)
        self.layer_scale = init_values is not None
        if self.use_ln0:
            self.ln0 = nn.LayerNorm(embed_dims)
        self.ln1 = nn.LayerNorm(embed_dims)
        self.ln2 = nn.LayerNorm(embed_dims)
        self.att = SpatialMix(embed_dims, layer_id, num_layers, key_norm=key_norm, shift_pixel=shift_pixel)
        self.ffn = ChannelMix(embed_dims, layer_id, num_layers, hidden_rate, key_norm=key_norm, shift_pixel=shift_pixel)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if self.layer_scale:
            self.gamma1 = nn.Parameter(float(init_values) * torch.ones(embed_dims))  # type: ignore[arg-type]
            self.gamma2 = nn.Parameter(float(init_values) * torch.ones(embed_dims))  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:
        """Apply the block.

        Args:
            x: tokens ``[B, N, C]``.
            grid: their token grid (its product is N).

        Returns:
            tokens ``[B, N, C]``.
        """
        if self.use_ln0:
            x = self.ln0(x)
        if self.post_norm:
            a = self.ln1(self.att(x, grid))
        else:
            a = self.att(self.ln1(x), grid)
        if self.layer_scale:
            a = self.gamma1 * a
        x = x + self.drop_path(a)
        if self.post_norm:
            f = self.ln2(self.ffn(x, grid))
        else:
            f = self.ffn(self.ln2(x), grid)
        if self.layer_scale:
            f = self.gamma2 * f
        return x + self.drop_path(f)


class PatchExpand(nn.Module):
    """Learnable upsampling of a token grid by ``scale`` per axis: ``Linear(C_in, scale^nd * C_out)``, pixel
    shuffle, LayerNorm.

    Args:
        spatial_dims: 2 or 3.
        in_dims: input channels.
        out_dims: output channels.
        scale: upsampling factor per spatial axis.
    """

    def __init__(self, spatial_dims: int, in_dims: int, out_dims: int, scale: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.scale = int(scale)
        self.out_dims = out_dims
        self.expand = nn.Linear(in_dims, (self.scale**spatial_dims) * out_dims, bias=False)
        self.norm = nn.LayerNorm(out_dims)

    def forward(self, x: torch.Tensor, grid: List[int]) -> Tuple[torch.Tensor, List[int]]:
        """Upsample the tokens.

        Args:
            x: tokens ``[B, N, in_dims]``.
            grid: their token grid (its product is N).

        Returns:
            the tokens ``[B, N * scale^nd, out_dims]`` and their grid (``grid`` times ``scale``).
        """
        b = x.shape[0]
        s = self.scale
        nd = len(grid)
        y = self.expand(x).reshape([b] + grid + [s] * nd + [self.out_dims])
        # [B, g0.., s0.., C] -> [B, g0, s0, g1, s1, ..., C]
        perm = [0]
        for i in range(nd):
            perm += [1 + i, 1 + nd + i]
        perm.append(1 + 2 * nd)
        new_grid = [g * s for g in grid]
        y = y.permute(perm).reshape(b, -1, self.out_dims)
        return self.norm(y), new_grid


class PatchMerge(nn.Module):
    """Downsampling of a token grid by 2 per axis: concatenate each 2^nd neighbourhood, LayerNorm, Linear.

    Args:
        spatial_dims: 2 or 3.
        in_dims: input channels.
        out_dims: output channels.
    """

    def __init__(self, spatial_dims: int, in_dims: int, out_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        n = 2**spatial_dims
        self.norm = nn.LayerNorm(n * in_dims)
        self.reduction = nn.Linear(n * in_dims, out_dims, bias=False)

    def forward(self, x: torch.Tensor, grid: List[int]) -> Tuple[torch.Tensor, List[int]]:
        """Downsample the tokens.

        Args:
            x: tokens ``[B, N, in_dims]``.
            grid: their token grid (its product is N; even sizes).

        Returns:
            the tokens ``[B, N / 2^nd, out_dims]`` and their grid (``grid`` halved).
        """
        b, _, c = x.shape
        nd = len(grid)
        for g in grid:
            if g % 2 != 0:
                raise ValueError(f"PatchMerge needs an even token grid, got {grid}.")
        shape = [b]
        for g in grid:
            shape += [g // 2, 2]
        shape.append(c)
        y = x.reshape(shape)
        perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)] + [1 + 2 * nd]
        new_grid = [g // 2 for g in grid]
        y = y.permute(perm).reshape(b, -1, (1 << nd) * c)
        return self.reduction(self.norm(y)), new_grid
