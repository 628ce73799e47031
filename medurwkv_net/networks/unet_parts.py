"""Parts of the Med-URWKV U-Net that do not depend on the number of spatial dimensions.

The input guards (tensor subclass removal, NaN/Inf check, argument validation) and the decoder's small modules
(skip fusion, stride-16 projection, a checkpointable stack of VRWKV blocks). Parameter names inside these
modules are part of the checkpoint format: ``norm``/``proj`` of :class:`Fuse` and :class:`Project`, and the
children ``0``, ``1``, ... of :class:`BlockStack`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .vrwkv import VRWKV_VARIANTS, checkpointed

__all__ = ["check_finite_input", "plain_tensor", "check_unet_args", "Fuse", "Project", "BlockStack"]


def plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """Drop a tensor subclass such as MONAI's MetaTensor.

    Its metadata tracking runs on every op of the network (slow) and fails inside the Bi-WKV op for batched
    inputs. The output is a plain tensor; MONAI's inferers and ``Invertd`` restore the metadata from the input.

    Args:
        x: the network's input.

    Returns:
        ``x`` as a plain ``torch.Tensor`` (the same storage).
    """
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

    Args:
        x: the tensor to check.
        name: what ``x`` is, for the message.
    """
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise ValueError(f"{name} of shape {tuple(x.shape)} contains {n_nan} NaN and {n_inf} Inf values.")


def check_unet_args(
    name: str,
    in_channels: int,
    out_channels: int,
    feature_size: int,
    bottleneck_depth: int,
    encoder: str,
    out_indices: Sequence[int],
    decoder_depths: Sequence[int],
    final_dims: Optional[int],
) -> Tuple[Tuple[int, ...], int]:
    """Validate the U-Net's size arguments (one ValueError naming the argument and its value).

    Args:
        name: the class, for messages.
        in_channels: input channels (>= 1).
        out_channels: output channels (>= 1).
        feature_size: decoder width at the finest stage (>= 1, divisible by 4).
        bottleneck_depth: blocks in the bottleneck (>= 0).
        encoder: a key of :data:`~medurwkv_net.networks.vrwkv.VRWKV_VARIANTS`.
        out_indices: the four encoder blocks feeding the decoder.
        decoder_depths: three non-negative block counts.
        final_dims: full-resolution width, or None for ``feature_size // 2``.

    Returns:
        ``(decoder_depths, final_dims)`` as ints.
    """
    for arg, val in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("feature_size", feature_size),
        ("bottleneck_depth", bottleneck_depth),
    ):
        if not isinstance(val, int) or isinstance(val, bool) or val < (0 if arg == "bottleneck_depth" else 1):
            raise ValueError(f"{name}: {arg} must be a positive int, got {val!r}.")
    if feature_size % 4 != 0:
        raise ValueError(f"{name}: feature_size must be divisible by 4 (Q-Shift groups), got {feature_size}.")
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


class Fuse(nn.Module):
    """Concatenate along channels, LayerNorm, Linear to ``out_dims``.

    Args:
        in_dims: channels after concatenation.
        out_dims: output channels.
    """

    def __init__(self, in_dims: int, out_dims: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dims)
        self.proj = nn.Linear(in_dims, out_dims)

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """Fuse token tensors ``[B, T, C_i]`` (cast to the first one's dtype) into ``[B, T, out_dims]``."""
        dtype = xs[0].dtype
        return self.proj(self.norm(torch.cat([t.to(dtype) for t in xs], dim=-1)))


class Project(nn.Module):
    """Linear (no bias) then LayerNorm: the stride-16 skip projection.

    Args:
        in_dims: input channels.
        out_dims: output channels.
    """

    def __init__(self, in_dims: int, out_dims: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dims, out_dims, bias=False)
        self.norm = nn.LayerNorm(out_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project tokens ``[B, T, in_dims]`` to ``[B, T, out_dims]``."""
        return self.norm(self.proj(x))


class BlockStack(nn.Sequential):
    """VRWKV blocks run in order on one token grid.

    Children are named ``0``, ``1``, ... (the parameter names of a ``ModuleList``). With ``grad_checkpointing``
    their activations are recomputed in the backward pass while training.

    Args:
        blocks: the blocks.
    """

    def __init__(self, blocks: List[nn.Module]) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:  # type: ignore[override]
        """Run the blocks on tokens ``[B, T, C]`` laid out on ``grid``."""
        for blk in self:
            if torch.jit.is_scripting():  # a scripted model runs inference: no gradient checkpointing
                x = blk(x, grid)
            elif self.grad_checkpointing and self.training and x.requires_grad and not torch.jit.is_tracing():
                x = checkpointed(blk, x, grid)
            else:
                x = blk(x, grid)
        return x
