"""Med-URWKV: a pure-RWKV U-Net with a (pre-trainable) Vision-RWKV encoder (docs/DESIGN.md section 4)."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import PatchEmbed, PatchExpand, PatchMerge, VRWKVBlock, exporting, shape_str
from .vrwkv import VRWKV_VARIANTS, _checkpointed, create_vrwkv

__all__ = ["MedURWKV", "check_finite_input"]

_PRETRAINED_NAMES = {"tiny": "vrwkv_t_in1k_224", "small": "vrwkv_s_in1k_224", "base": "vrwkv_b_in1k_224"}


def _plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """Drop a tensor subclass such as MONAI's MetaTensor: its metadata tracking runs on every op of the
    network (slow) and fails inside the Bi-WKV op for batched inputs. The output is a plain tensor;
    MONAI's inferers and ``Invertd`` restore the metadata from the input."""
    if torch.jit.is_scripting():  # a scripted model only ever sees plain tensors
        return x
    return _drop_subclass(x)


@torch.jit.unused
def _drop_subclass(x: torch.Tensor) -> torch.Tensor:
    if type(x) is not torch.Tensor and hasattr(x, "as_tensor"):
        return x.as_tensor()
    return x


def check_finite_input(x: torch.Tensor, name: str = "MedURWKV input") -> None:
    """Raise ValueError when ``x`` holds NaN or Inf values, naming how many of each and the shape.

    Reads every value (a device synchronisation on GPU): a data check for inferers and data pipelines,
    outside the network's forward (the network computes NaN/Inf outputs from NaN/Inf inputs).
    :func:`medurwkv_net.reliability.validate_image` runs the same check for the inferers.
    """
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise ValueError(f"{name} of shape {tuple(x.shape)} contains {n_nan} NaN and {n_inf} Inf values.")


def _check_unet_args(
    name: str, in_channels: int, out_channels: int, feature_size: int, bottleneck_depth: int, encoder: str,
    out_indices: Sequence[int], decoder_depths: Sequence[int], final_dims: Optional[int],
) -> Tuple[Tuple[int, ...], int]:
    """Validate the arguments the 2D and 3D models share; returns (decoder_depths, final_dims)."""
    for arg, val in (("in_channels", in_channels), ("out_channels", out_channels),
                     ("feature_size", feature_size), ("bottleneck_depth", bottleneck_depth)):
        if not isinstance(val, int) or isinstance(val, bool) or val < (0 if arg == "bottleneck_depth" else 1):
            raise ValueError(f"{name}: {arg} must be a positive int, got {val!r}.")
    if encoder not in VRWKV_VARIANTS:
        raise ValueError(f"{name}: unknown encoder {encoder!r}; choose one of {sorted(VRWKV_VARIANTS)}.")
    if len(tuple(out_indices)) != 4:
        raise ValueError(f"{name}: out_indices needs 4 encoder blocks (strides 4/8/16/32), got {out_indices!r}.")
    depths = tuple(int(d) for d in decoder_depths)
    if len(depths) != 3 or any(d < 0 for d in depths):
        raise ValueError(f"{name}: decoder_depths must be 3 non-negative ints, got {decoder_depths!r}.")
    final = feature_size // 2 if final_dims is None else int(final_dims)
    if final < 1:
        raise ValueError(f"{name}: final_dims must be positive, got {final}.")
    return depths, final


class _Fuse(nn.Module):
    """Concatenate along channels, LayerNorm, Linear to ``out_dims``."""

    def __init__(self, in_dims: int, out_dims: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dims)
        self.proj = nn.Linear(in_dims, out_dims)

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        dtype = xs[0].dtype
        return self.proj(self.norm(torch.cat([t.to(dtype) for t in xs], dim=-1)))


class _Project(nn.Module):
    """Linear then LayerNorm (stride-16 skip projection)."""

    def __init__(self, in_dims: int, out_dims: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dims, out_dims, bias=False)
        self.norm = nn.LayerNorm(out_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class _BlockStack(nn.Sequential):
    """VRWKV blocks run in order on one token grid; children are named ``0``, ``1``, ... (the parameter names
    of a ``ModuleList``). ``use_checkpoint`` recomputes their activations in the backward pass."""

    def __init__(self, blocks: List[nn.Module]) -> None:
        super().__init__(*blocks)
        self.use_checkpoint = False

    def forward(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:  # type: ignore[override]
        for blk in self:
            if torch.jit.is_scripting():  # a scripted model runs inference: no gradient checkpointing
                x = blk(x, grid)
            elif self.use_checkpoint and self.training and x.requires_grad and not torch.jit.is_tracing():
                x = _checkpointed(blk, x, grid)
            else:
                x = blk(x, grid)
        return x


class MedURWKV(nn.Module):
    """Med-URWKV ("Med-URWKV: Pure RWKV With ImageNet Pre-training For Medical Image Segmentation",
    arXiv 2506.10858), re-implemented from the paper and our design decisions (docs/DESIGN.md section 4).

    Architecture (2D, strides relative to the padded input):

    - encoder: a plain Vision-RWKV (``self.encoder``, released checkpoints load into it); the outputs of
      blocks ``out_indices`` (default 3, 6, 9, 12, all at stride 16) are brought to strides 4 / 8 / 16 / 32 by
      linear patch expanding x4 / x2, a linear projection, and patch merging, with widths
      ``feature_size * (1, 2, 4, 8)``;
    - bottleneck: ``bottleneck_depth`` VRWKV blocks on the stride-32 feature;
    - decoder: three stages (stride 16, 8, 4), each patch expanding x2, concatenation of the skip, a linear fuse
      and ``decoder_depths[i]`` VRWKV blocks; the stride-4 stage also receives a linear 4x4 patch embedding of
      the image itself (``input_skip``), which carries pixel detail the stride-16 encoder cannot;
    - head: learnable patch expanding x4 to full resolution (``final_dims`` channels), concatenated with the
      input image (``input_skip``), a point-wise ``Linear-GELU`` and a point-wise linear layer (a 1x1 conv) to
      ``out_channels``.

    Any input size works: the input is zero padded (bottom/right) to a multiple of 32 and the output is
    cropped back to the input's spatial size.

    Args:
        spatial_dims: 2, or 3 for volumes (builds :class:`~medurwkv_net.networks.volumetric.MedURWKV3D`, which also
            takes ``patch_size`` and inflates ``pretrained`` 2D weights to 3D).
        in_channels: input channels.
        out_channels: output channels (classes, logits).
        img_size: nominal input size; sets the encoder's position-embedding grid (``img_size / 16``). Other
            sizes work (the embedding is resized on every forward).
        encoder: VRWKV variant ``"tiny"``, ``"small"`` or ``"base"``.
        pretrained: ``False``; ``True`` for the released ImageNet-1K weights of ``encoder``; or a weight source
            string (local ``.pth``/``.safetensors``, ``hf://owner/repo/file[@rev]``, registry name) passed to
            :func:`medurwkv_net.load_vrwkv_weights`. The RGB patch embedding is adapted to ``in_channels``: every
            channel gets the RGB-summed kernel divided by ``in_channels`` (1 channel: the sum over RGB).
        feature_size: decoder width at stride 4; the widths at strides 4/8/16/32 are ``feature_size * (1, 2, 4, 8)``.
        out_indices: the four encoder blocks giving the stride 4 / 8 / 16 / 32 features.
        bottleneck_depth: VRWKV blocks at stride 32.
        decoder_depths: VRWKV blocks in the decoder stages at stride 16, 8 and 4.
        final_dims: channels of the full-resolution features before the head (default ``feature_size // 2``).
        input_skip: feed the image to the stride-4 decoder stage and to the head (see above).
        drop_path_rate: stochastic depth of the bottleneck and decoder blocks (linearly increasing).
        encoder_drop_path_rate: stochastic depth of the encoder blocks.
        use_checkpoint: gradient checkpointing of all VRWKV blocks (see :meth:`set_grad_checkpointing`).
        check_finite: also check every forward's input for NaN/Inf (:func:`check_finite_input`; skipped while
            tracing, exporting or compiling). Off by default: the check reads every value, a device
            synchronisation per call; validate data with :func:`medurwkv_net.reliability.validate_image`.
        hf_cache_dir: Hugging Face cache directory for downloads (default: the Hub's).

    Examples::

        # grey-scale input, 3 classes, ImageNet-pretrained VRWKV-T encoder
        >>> net = MedURWKV(spatial_dims=2, in_channels=1, out_channels=3, img_size=256, pretrained=True)
        # RGB input of any size, trained from scratch
        >>> net = MedURWKV(in_channels=3, out_channels=2)
        >>> net(torch.randn(2, 3, 97, 130)).shape
        torch.Size([2, 2, 97, 130])
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "MedURWKV":
        # MedURWKV(spatial_dims=3, ...) builds the volumetric model (a MedURWKV subclass; Python then runs its
        # __init__ with the same arguments)
        spatial_dims = kwargs.get("spatial_dims", args[0] if args else 2)
        if cls is MedURWKV and spatial_dims == 3:
            from .volumetric import MedURWKV3D

            return super().__new__(MedURWKV3D)
        return super().__new__(cls)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        img_size: Union[int, Sequence[int]] = 224,
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
    ) -> None:
        super().__init__()
        if spatial_dims != 2:  # 3 never gets here: __new__ builds a MedURWKV3D
            raise ValueError(f"MedURWKV: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        decoder_depths, final_dims = _check_unet_args(
            "MedURWKV", in_channels, out_channels, feature_size, bottleneck_depth, encoder, out_indices,
            decoder_depths, final_dims,
        )
        if feature_size % 4 != 0:
            raise ValueError(f"MedURWKV: feature_size must be divisible by 4 (Q-Shift groups), got {feature_size}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input_skip = bool(input_skip)
        self.check_finite = bool(check_finite)
        self.use_checkpoint = bool(use_checkpoint)
        self.encoder = create_vrwkv(
            encoder, in_channels=in_channels, img_size=img_size, out_indices=tuple(out_indices),
            drop_path_rate=encoder_drop_path_rate, with_cp=use_checkpoint,
        )
        self._build_decoder(
            self.encoder.embed_dims, feature_size, bottleneck_depth, decoder_depths, drop_path_rate, final_dims,
            stem=PatchEmbed(2, in_channels, feature_size, 4) if self.input_skip else None,
            final_expand=PatchExpand(2, feature_size, final_dims, 4),
        )

        self.pretrained_source: Optional[str] = None
        if pretrained:
            source = _PRETRAINED_NAMES[encoder] if pretrained is True else str(pretrained)
            from medurwkv_net.pretrained import load_vrwkv_weights

            load_vrwkv_weights(self.encoder, source, strict=True, cache_dir=hf_cache_dir)
            self.pretrained_source = source

    # ------------------------------------------------------------------ switches
    def _build_decoder(
        self, encoder_dims: int, feature_size: int, bottleneck_depth: int, decoder_depths: Tuple[int, ...],
        drop_path_rate: float, final_dims: int, stem: Optional[nn.Module], final_expand: nn.Module,
    ) -> None:
        """Skip projections, bottleneck, decoder and head, shared by the 2D and 3D models; only the
        full-resolution stem and final expansion differ by dimension."""
        sd = self.spatial_dims
        e = encoder_dims
        d = [feature_size, 2 * feature_size, 4 * feature_size, 8 * feature_size]
        self.to_s4 = PatchExpand(sd, e, d[0], 4)
        self.to_s8 = PatchExpand(sd, e, d[1], 2)
        self.to_s16 = _Project(e, d[2])
        self.to_s32 = PatchMerge(sd, e, d[3])
        n_dec = bottleneck_depth + sum(decoder_depths)
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, max(n_dec, 1))]

        def blocks(width: int, depth: int, start: int) -> _BlockStack:
            stack = _BlockStack(
                [VRWKVBlock(width, layer_id=i, num_layers=depth, drop_path=dpr[start + i], use_ln0=False)
                 for i in range(depth)]
            )
            stack.use_checkpoint = self.use_checkpoint
            return stack

        self.bottleneck = blocks(d[3], bottleneck_depth, 0)
        self.bottleneck_norm = nn.LayerNorm(d[3])
        start = bottleneck_depth
        self.up16 = PatchExpand(sd, d[3], d[2], 2)
        self.fuse16 = _Fuse(2 * d[2], d[2])
        self.dec16 = blocks(d[2], decoder_depths[0], start)
        start += decoder_depths[0]
        self.up8 = PatchExpand(sd, d[2], d[1], 2)
        self.fuse8 = _Fuse(2 * d[1], d[1])
        self.dec8 = blocks(d[1], decoder_depths[1], start)
        start += decoder_depths[1]
        self.up4 = PatchExpand(sd, d[1], d[0], 2)
        if stem is not None:
            self.stem = stem
        self.fuse4 = _Fuse((3 if self.input_skip else 2) * d[0], d[0])
        self.dec4 = blocks(d[0], decoder_depths[2], start)
        self.dec_norm = nn.LayerNorm(d[0])
        self.final_expand = final_expand
        head_in = final_dims + (self.in_channels if self.input_skip else 0)
        self.refine = nn.Sequential(nn.Linear(head_in, final_dims), nn.GELU())
        self.out = nn.Linear(final_dims, self.out_channels)

    def freeze_encoder(self) -> None:
        """Stop gradients into the VRWKV encoder (its parameters get ``requires_grad=False``)."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def unfreeze_encoder(self) -> None:
        """Make the encoder trainable again."""
        for p in self.encoder.parameters():
            p.requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute VRWKV block activations during backward (less memory, about 30% more compute)."""
        self.use_checkpoint = bool(enable)
        self.encoder.set_grad_checkpointing(enable)
        for stack in (self.bottleneck, self.dec16, self.dec8, self.dec4):
            stack.use_checkpoint = self.use_checkpoint

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"MedURWKV expects input of shape [B, C, H, W] ({self.spatial_dims + 2} dims), "
                f"got shape {shape_str(x)}."
            )
        self._check_channels(x)

    def _check_channels(self, x: torch.Tensor) -> None:
        """The checks of the input the 2D and 3D models share (channels, empty sizes, optional finite check)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"MedURWKV was built with in_channels={self.in_channels} but got {x.shape[1]} channels "
                f"(input shape {shape_str(x)})."
            )
        if min(x.shape[2:]) < 1:
            raise ValueError(f"MedURWKV got an empty spatial size, input shape {shape_str(x)}.")
        if torch.jit.is_scripting():  # the finite check reads values on the host: eager only
            return
        self._check_finite(x)

    @torch.jit.unused
    def _check_finite(self, x: torch.Tensor) -> None:
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if self.check_finite and not exporting and not torch.compiler.is_compiling():
            check_finite_input(x)

    def _segment(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, out_channels, *grid]`` for an input already padded to the network's multiple;
        shared by the 2D and 3D models, whose grids have 2 or 3 entries."""
        b = x.shape[0]
        feats, g16 = self.encoder.forward_tokens(x)
        s4, _ = self.to_s4(feats[0], g16)
        s8, _ = self.to_s8(feats[1], g16)
        s16 = self.to_s16(feats[2])
        y, g = self.to_s32(feats[3], g16)

        y = self.bottleneck_norm(self.bottleneck(y, g))
        y, g = self.up16(y, g)
        y = self.dec16(self.fuse16([y, s16]), g)
        y, g = self.up8(y, g)
        y = self.dec8(self.fuse8([y, s8]), g)
        y, g = self.up4(y, g)
        if self.input_skip:
            stem, _ = self.stem(x)
            y = self.fuse4([y, s4, stem])
        else:
            y = self.fuse4([y, s4])
        y = self.dec_norm(self.dec4(y, g))
        y, g = self.final_expand(y, g)
        y = y.reshape([b] + g + [-1])
        n = len(g)  # explicit permutations: ONNX export rejects the negative axes of movedim
        if self.input_skip:
            y = torch.cat([y, x.permute([0] + list(range(2, n + 2)) + [1]).to(y.dtype)], dim=-1)
        return self.out(self.refine(y)).permute([0, n + 1] + list(range(1, n + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: ``[B, in_channels, H, W]``, any H, W >= 1.

        Returns:
            logits ``[B, out_channels, H, W]``.
        """
        x = _plain_tensor(x)
        self._check_input(x)
        h, w = x.shape[2], x.shape[3]
        # padded sizes written as multiples of 32, so that an exported graph knows the patch grids are even
        ph, pw = (h + 31) // 32 * 32 - h, (w + 31) // 32 * 32 - w
        if exporting() or ph > 0 or pw > 0:
            x = F.pad(x, [0, pw, 0, ph])
        y = self._segment(x)
        return y[:, :, :h, :w]
