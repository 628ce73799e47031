"""Med-URWKV: a pure-RWKV U-Net with a Vision-RWKV encoder, for images and volumes (docs/DESIGN.md section 4).

The network class does no I/O: ImageNet weights are loaded by :func:`medurwkv_net.create_medurwkv`
(``pretrained=...``), which builds this class and then fills its encoder (:mod:`medurwkv_net.pretrained`).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import PatchEmbed, PatchExpand, PatchMerge, VRWKVBlock, exporting, shape_str
from .unet_parts import BlockStack, Fuse, Project, check_finite_input, check_unet_args, plain_tensor
from .volume_blocks import VolumePatchEmbed, VolumePatchExpand, as_3tuple
from .vrwkv import create_vrwkv, deprecated_checkpoint_flag

__all__ = ["MedURWKV", "check_finite_input"]

_DEFAULT_IMG_SIZE = {2: 224, 3: 96}


class MedURWKV(nn.Module):
    """Med-URWKV for 2D images and 3D volumes (``spatial_dims`` 2 or 3), without weight loading.

    "Med-URWKV: Pure RWKV With ImageNet Pre-training For Medical Image Segmentation" (arXiv 2506.10858),
    re-implemented from the paper and our design decisions (docs/DESIGN.md section 4); the 3D form is this
    project's extension. With patch size ``p`` (16 by default; strides relative to the padded input):

    - encoder: a plain Vision-RWKV (``self.encoder``, :class:`~medurwkv_net.networks.vrwkv.VRWKV` with the same
      ``spatial_dims``; released checkpoints load into it); the outputs of blocks ``out_indices`` (all at
      stride ``p``) are brought to strides ``p/4, p/2, p, 2p`` by linear patch expanding x4 / x2, a linear
      projection, and patch merging, with widths ``feature_size * (1, 2, 4, 8)``;
    - bottleneck: ``bottleneck_depth`` VRWKV blocks at stride ``2p``;
    - decoder: three stages (stride ``p, p/2, p/4``), each patch expanding x2, concatenation of the skip, a
      linear fuse and ``decoder_depths[i]`` VRWKV blocks; the last stage also receives a linear ``p/4`` patch
      embedding of the input itself (``input_skip``), which carries detail the stride-``p`` encoder cannot;
    - head: learnable patch expanding by ``p/4`` to full resolution (``final_dims`` channels), concatenated with
      the input (``input_skip``), a point-wise ``Linear-GELU`` and a point-wise linear layer to ``out_channels``.

    Any input size works: the input is zero padded at the end of every axis to a multiple of ``2p`` and the
    output is cropped back to the input's size. In 3D a volume is ``[B, C, H, W, D]`` (MONAI's convention;
    ``(H, W)`` is the image plane of a 2D checkpoint), the Q-Shift takes both neighbours along each of the three
    axes, and patches may be anisotropic (``patch_size=(16, 16, 4)`` for thick slices). Parameter names are the
    same in 2D and 3D, and the same as in earlier releases (``MedURWKV3D``), so their checkpoints load.

    Args:
        spatial_dims: 2 (images ``[B, C, H, W]``) or 3 (volumes ``[B, C, H, W, D]``).
        in_channels: input channels.
        out_channels: output channels (classes, logits).
        img_size: nominal input size (an int or one int per axis); sets the encoder's position-embedding grid
            ``img_size / patch_size``. Other sizes work (the embedding is resized on every forward). Default: 224
            in 2D, 96 in 3D.
        encoder: VRWKV variant ``"tiny"``, ``"small"`` or ``"base"``.
        feature_size: decoder width at stride ``p/4``; the widths at the four scales are
            ``feature_size * (1, 2, 4, 8)``.
        out_indices: the four encoder blocks giving the four scales.
        bottleneck_depth: VRWKV blocks at stride ``2p``.
        decoder_depths: VRWKV blocks in the decoder stages at stride ``p``, ``p/2`` and ``p/4``.
        final_dims: channels of the full-resolution features before the head (default ``feature_size // 2``).
        input_skip: feed the input to the last decoder stage and to the head (see above).
        drop_path_rate: stochastic depth of the bottleneck and decoder blocks (linearly increasing).
        encoder_drop_path_rate: stochastic depth of the encoder blocks.
        grad_checkpointing: gradient checkpointing of all VRWKV blocks (see :meth:`set_grad_checkpointing`).
        check_finite: also check every forward's input for NaN/Inf (:func:`check_finite_input`; skipped while
            tracing, exporting or compiling). Off by default: the check reads every value, a device
            synchronisation per call; validate data with :func:`medurwkv_net.reliability.validate_image`.
        patch_size: encoder patch size, a multiple of 4: an int in 2D, an int or 3 ints in 3D (e.g. 16 or
            ``(16, 16, 8)``). The released ImageNet weights have 16x16 patches.
        pretrained: kept so that configs written for earlier releases (``"pretrained": false``) still build;
            only False or None is accepted. ImageNet weights: :func:`medurwkv_net.create_medurwkv`.
        use_checkpoint: deprecated name of ``grad_checkpointing`` (accepted with a DeprecationWarning).

    Examples::

        # grey-scale input, 3 classes, trained from scratch
        >>> net = MedURWKV(spatial_dims=2, in_channels=1, out_channels=3, img_size=256)
        >>> net(torch.randn(2, 1, 97, 130)).shape
        torch.Size([2, 3, 97, 130])
        # volumes with thick slices
        >>> vol = MedURWKV(spatial_dims=3, in_channels=1, out_channels=2, patch_size=(16, 16, 4))
        # with the ImageNet-pretrained VRWKV-T encoder (inflated to 3D for volumes)
        >>> net = medurwkv_net.create_medurwkv(spatial_dims=2, in_channels=1, out_channels=3, pretrained=True)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        img_size: Optional[Union[int, Sequence[int]]] = None,
        encoder: str = "tiny",
        feature_size: int = 48,
        out_indices: Sequence[int] = (2, 5, 8, 11),
        bottleneck_depth: int = 3,
        decoder_depths: Sequence[int] = (2, 2, 2),
        final_dims: Optional[int] = None,
        input_skip: bool = True,
        drop_path_rate: float = 0.0,
        encoder_drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        check_finite: bool = False,
        patch_size: Union[int, Sequence[int]] = 16,
        *,
        pretrained: Any = False,
        use_checkpoint: Optional[bool] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if pretrained not in (False, None):
            raise ValueError(
                f"{name} builds the network only and loads no weights, got pretrained={pretrained!r}. Build it with "
                "medurwkv_net.create_medurwkv(..., pretrained=...) (in a bundle config: "
                '"_target_": "medurwkv_net.create_medurwkv"), or load weights into an existing network with '
                "medurwkv_net.pretrained.load_pretrained(net, source)."
            )
        depths, final = check_unet_args(
            name,
            in_channels,
            out_channels,
            feature_size,
            bottleneck_depth,
            encoder,
            out_indices,
            decoder_depths,
            final_dims,
        )
        patch = _unet_patch(name, spatial_dims, patch_size)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input_skip = bool(input_skip)
        self.check_finite = bool(check_finite)
        self.grad_checkpointing = deprecated_checkpoint_flag(name, "use_checkpoint", use_checkpoint, grad_checkpointing)
        self.patch_size: List[int] = list(patch)
        self.pad_multiple: List[int] = [2 * p for p in patch]
        self.input_layout = "[B, C, H, W]" if spatial_dims == 2 else "[B, C, H, W, D]"
        #: the weight source the encoder was filled from (set by :func:`medurwkv_net.create_medurwkv`)
        self.pretrained_source: Optional[str] = None
        self.encoder = create_vrwkv(
            encoder,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            img_size=_DEFAULT_IMG_SIZE[spatial_dims] if img_size is None else img_size,
            patch_size=patch[0] if spatial_dims == 2 else patch,
            out_indices=tuple(out_indices),
            drop_path_rate=encoder_drop_path_rate,
            grad_checkpointing=self.grad_checkpointing,
        )
        quarter = [p // 4 for p in patch]
        if spatial_dims == 2:
            stem: nn.Module = PatchEmbed(2, in_channels, feature_size, quarter[0])
            final_expand: nn.Module = PatchExpand(2, feature_size, final, quarter[0])
        else:
            stem = VolumePatchEmbed(in_channels, feature_size, quarter)
            final_expand = VolumePatchExpand(feature_size, final, quarter)
        self._build_decoder(
            feature_size,
            bottleneck_depth,
            depths,
            drop_path_rate,
            final,
            stem if self.input_skip else None,
            final_expand,
        )

    def _build_decoder(
        self,
        feature_size: int,
        bottleneck_depth: int,
        decoder_depths: Sequence[int],
        drop_path_rate: float,
        final_dims: int,
        stem: Optional[nn.Module],
        final_expand: nn.Module,
    ) -> None:
        """Skip projections, bottleneck, decoder and head (the module names are the checkpoint format)."""
        sd = self.spatial_dims
        e = self.encoder.embed_dims
        d = [feature_size, 2 * feature_size, 4 * feature_size, 8 * feature_size]
        self.to_s4 = PatchExpand(sd, e, d[0], 4)
        self.to_s8 = PatchExpand(sd, e, d[1], 2)
        self.to_s16 = Project(e, d[2])
        self.to_s32 = PatchMerge(sd, e, d[3])
        n_dec = bottleneck_depth + sum(decoder_depths)
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, max(n_dec, 1))]

        def blocks(width: int, depth: int, start: int) -> BlockStack:
            stack = BlockStack(
                [
                    VRWKVBlock(width, layer_id=i, num_layers=depth, drop_path=dpr[start + i], use_ln0=False)
                    for i in range(depth)
                ]
            )
            stack.grad_checkpointing = self.grad_checkpointing
            return stack

        self.bottleneck = blocks(d[3], bottleneck_depth, 0)
        self.bottleneck_norm = nn.LayerNorm(d[3])
        start = bottleneck_depth
        self.up16 = PatchExpand(sd, d[3], d[2], 2)
        self.fuse16 = Fuse(2 * d[2], d[2])
        self.dec16 = blocks(d[2], decoder_depths[0], start)
        start += decoder_depths[0]
        self.up8 = PatchExpand(sd, d[2], d[1], 2)
        self.fuse8 = Fuse(2 * d[1], d[1])
        self.dec8 = blocks(d[1], decoder_depths[1], start)
        start += decoder_depths[1]
        self.up4 = PatchExpand(sd, d[1], d[0], 2)
        if stem is not None:
            self.stem = stem
        self.fuse4 = Fuse((3 if self.input_skip else 2) * d[0], d[0])
        self.dec4 = blocks(d[0], decoder_depths[2], start)
        self.dec_norm = nn.LayerNorm(d[0])
        self.final_expand = final_expand
        head_in = final_dims + (self.in_channels if self.input_skip else 0)
        self.refine = nn.Sequential(nn.Linear(head_in, final_dims), nn.GELU())
        self.out = nn.Linear(final_dims, self.out_channels)

    # ------------------------------------------------------------------ switches
    def freeze_encoder(self) -> None:
        """Stop gradients into the VRWKV encoder (its parameters get ``requires_grad=False``)."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def unfreeze_encoder(self) -> None:
        """Make the encoder trainable again."""
        for p in self.encoder.parameters():
            p.requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute VRWKV block activations during backward (less memory, about 30% more compute).

        Args:
            enable: switch it on (True) or off (False), for the encoder and the decoder.
        """
        self.grad_checkpointing = bool(enable)
        self.encoder.set_grad_checkpointing(enable)
        for stack in (self.bottleneck, self.dec16, self.dec8, self.dec4):
            stack.grad_checkpointing = self.grad_checkpointing

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        """Rank, channels and empty sizes of the input (one ValueError naming the shape); optional finite check."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"MedURWKV (spatial_dims={self.spatial_dims}) expects input of shape {self.input_layout} "
                f"({self.spatial_dims + 2} dims), got shape {shape_str(x)}."
            )
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
        exporting_now = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if self.check_finite and not exporting_now and not torch.compiler.is_compiling():
            check_finite_input(x)

    def _segment(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, out_channels, *grid]`` for an input already padded to the network's multiple."""
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
        """Segment ``x``.

        Args:
            x: ``[B, in_channels, H, W]`` (2D) or ``[B, in_channels, H, W, D]`` (3D), any sizes >= 1.

        Returns:
            logits ``[B, out_channels, H, W]`` or ``[B, out_channels, H, W, D]``.
        """
        x = plain_tensor(x)
        self._check_input(x)
        size = [s for s in x.shape[2:]]  # no int(): sizes stay symbolic while exporting
        pads: List[int] = []
        for i in range(len(size) - 1, -1, -1):
            m = self.pad_multiple[i]
            # a multiple of m written as ceil(s / m) * m, so that an exported graph knows the patch grids are even
            pads += [0, (size[i] + m - 1) // m * m - size[i]]
        if exporting() or sum(pads) > 0:
            x = F.pad(x, pads)
        y = self._segment(x)
        if len(size) == 2:
            return y[:, :, : size[0], : size[1]]
        return y[:, :, : size[0], : size[1], : size[2]]


def _unet_patch(name: str, spatial_dims: int, patch_size: Union[int, Sequence[int]]) -> List[int]:
    """The encoder patch size per axis; each a multiple of 4 (the stem and head work at ``p/4``)."""
    if spatial_dims == 2:
        if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 4 or patch_size % 4:
            raise ValueError(f"{name}: patch_size must be an int multiple of 4 in 2D, got {patch_size!r}.")
        return [patch_size, patch_size]
    patch = list(as_3tuple(patch_size, f"{name} patch_size", minimum=4))
    if any(p % 4 for p in patch):
        raise ValueError(f"{name}: every patch_size entry must be a multiple of 4, got {patch_size!r}.")
    return patch
