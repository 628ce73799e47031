"""Robust sliding-window inference: validated input, bounded memory, finite output.

Thin layer over :class:`monai.inferers.SlidingWindowInferer`: the network only ever sees
``sw_batch_size`` windows of ``roi_size`` on ``sw_device`` while the stitched output is accumulated on
``device`` (e.g. windows on the GPU, the full-size output in CPU memory), so the peak memory is the
input + output + one count map plus what one window batch needs, whatever the image size.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer

__all__ = [
    "SafeSimpleInferer",
    "SafeSliceInferer",
    "SafeSlidingWindowInferer",
    "infer_in_channels",
    "sliding_window_predict",
    "validate_image",
]


def infer_in_channels(network: torch.nn.Module) -> int | None:
    """``network.in_channels`` if present, else the ``in_channels`` of its first convolution, else None."""
    val = getattr(network, "in_channels", None)
    if isinstance(val, int):
        return val
    for m in network.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return None


def validate_image(image: Any, spatial_dims: int, in_channels: int | None = None, name: str = "image") -> torch.Tensor:
    """Return ``image`` as a float tensor ``[B, C, *spatial]``; raise ``ValueError`` naming what is wrong.

    Accepts ``[C, *spatial]`` (a batch dim is added) or ``[B, C, *spatial]``, numpy or torch.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(image).__name__}")
    if image.ndim == spatial_dims + 1:
        image = image.unsqueeze(0)
    if image.ndim != spatial_dims + 2:
        raise ValueError(
            f"{name} has shape {tuple(image.shape)}: expected [C, {spatial_dims} spatial dims] or "
            f"[B, C, {spatial_dims} spatial dims] for a {spatial_dims}D roi_size"
        )
    if any(s == 0 for s in image.shape):
        raise ValueError(f"{name} has an empty dimension: shape {tuple(image.shape)}")
    if any(s < 2 for s in image.shape[2:]):
        raise ValueError(
            f"{name} is {' x '.join(str(s) for s in image.shape[2:])} pixels: too small to segment (every spatial "
            "dimension needs at least 2 pixels); no mask was produced for it"
        )
    if in_channels is not None and image.shape[1] != in_channels:
        raise ValueError(
            f"{name} has {image.shape[1]} channel(s) (shape {tuple(image.shape)}), the network expects {in_channels}"
        )
    if image.dtype == torch.bool or not (image.is_floating_point() or image.is_complex()):
        image = image.float()
    elif image.dtype == torch.float64:
        image = image.float()
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(image).sum())
        n_inf = int(torch.isinf(image).sum())
        first = tuple(int(i) for i in (~finite).nonzero()[0].tolist())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} Inf values (first at index {first} of shape "
            f"{tuple(image.shape)}); fix or mask them before inference"
        )
    return image


def _source(inputs: Any) -> str:
    meta = getattr(inputs, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = ", ".join(str(n) for n in name)
    return f"'{name}'" if name else f"an input of shape {tuple(inputs.shape)}"


def _weights_origin(checkpoint: str | None) -> str:
    return f"the weights loaded from '{checkpoint}'" if checkpoint else "the network's current weights"


def _check_network(network: Any, checkpoint: str | None) -> None:
    """Raise ``RuntimeError`` naming the checkpoint if a parameter or buffer of ``network`` is NaN/Inf."""
    if not isinstance(network, torch.nn.Module):
        return
    bad = [
        n
        for n, t in (*network.named_parameters(), *network.named_buffers())
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise RuntimeError(
            f"refusing to run inference: {len(bad)} weight tensor(s) of {_weights_origin(checkpoint)} hold NaN/Inf "
            f"values (first: {bad[0]}); the checkpoint is corrupt or comes from a diverged training, use another one"
        )


def _check_output(out: Any, inputs: torch.Tensor, checkpoint: str | None, network: Any) -> None:
    tensors = out.values() if isinstance(out, dict) else (out if isinstance(out, (tuple, list)) else [out])
    for t in tensors:
        if isinstance(t, torch.Tensor) and not bool(torch.isfinite(t).all()):
            _check_network(network, checkpoint)
            raise RuntimeError(
                f"the network ({_weights_origin(checkpoint)}) produced {int((~torch.isfinite(t)).sum())} NaN/Inf "
                f"outputs for {_source(inputs)} (input range [{float(inputs.min())}, {float(inputs.max())}]); "
                "no mask was produced"
            )


class _CheckedInferer:
    """Shared checks: valid input, eval without autograd, finite weights and output (refused naming the
    checkpoint)."""

    # set by the constructors of the inferers below
    in_channels: int | None
    check_output: bool
    checkpoint: str | None

    def _spatial_dims(self, inputs: torch.Tensor) -> int:
        raise NotImplementedError  # each inferer below says how many spatial dimensions its input has

    def _checked_call(self, call: Any, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        in_ch = self.in_channels
        if in_ch is None and isinstance(network, torch.nn.Module):
            in_ch = infer_in_channels(network)
        meta = getattr(inputs, "meta", None) or {}
        name = f"image {_source(inputs)}" if meta.get("filename_or_obj") else "image"
        original = meta.get("spatial_shape")  # the size as read, before any resize
        if original is not None:
            sizes = [int(x) for x in torch.as_tensor(original).flatten().tolist()]
            if any(x < 2 for x in sizes):
                raise ValueError(
                    f"{name} is {' x '.join(map(str, sizes))} pixels: too small to segment (every spatial dimension "
                    "needs at least 2 pixels); no mask was produced for it"
                )
        inputs = validate_image(inputs, self._spatial_dims(inputs), in_ch, name=name)
        try:
            with torch.no_grad():
                out = call(inputs, network, *args, **kwargs)
        except (RuntimeError, ValueError):
            _check_network(network, self.checkpoint)  # NaN weights make some layers raise before any output
            raise
        if self.check_output:
            _check_output(out, inputs, self.checkpoint, network)
        return out


class SafeSlidingWindowInferer(_CheckedInferer, SlidingWindowInferer):
    """``SlidingWindowInferer`` that validates its input (NaN/Inf, channel count, rank), runs the network
    in eval mode without autograd, and refuses non-finite weights or output, naming ``checkpoint``.
    Drop-in for bundle ``inferer``.

    Args:
        roi_size: window size.
        in_channels: expected input channels (default: from the network's first convolution).
        check_output: refuse NaN/Inf network output.
        checkpoint: the file the weights come from, named in the messages.
        args, kwargs: passed to ``SlidingWindowInferer``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        *args: Any,
        in_channels: int | None = None,
        check_output: bool = True,
        checkpoint: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(roi_size, *args, **kwargs)
        self.in_channels = in_channels
        self.check_output = check_output
        self.checkpoint = checkpoint

    def _spatial_dims(self, inputs: torch.Tensor) -> int:
        roi = self.roi_size
        return len(roi) if isinstance(roi, Sequence) else inputs.ndim - 2

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any):
        return self._checked_call(super().__call__, inputs, network, *args, **kwargs)


class SafeSimpleInferer(_CheckedInferer, SimpleInferer):
    """``SimpleInferer`` (one forward pass) with the checks of :class:`SafeSlidingWindowInferer`.

    Args:
        spatial_dims: number of spatial dimensions of the input.
        in_channels: expected input channels (default: from the network's first convolution).
        check_output: refuse NaN/Inf network output.
        checkpoint: the file the weights come from, named in the messages.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int | None = None,
        check_output: bool = True,
        checkpoint: str | None = None,
    ):
        super().__init__()
        self.spatial_dims = int(spatial_dims)
        self.in_channels = in_channels
        self.check_output = check_output
        self.checkpoint = checkpoint

    def _spatial_dims(self, inputs: torch.Tensor) -> int:
        return self.spatial_dims

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any):
        return self._checked_call(super().__call__, inputs, network, *args, **kwargs)


class SafeSliceInferer(_CheckedInferer, SliceInferer):
    """``SliceInferer`` (a 2D network over the slices of a volume, stitched back into a volume) with the checks
    of :class:`SafeSlidingWindowInferer`; the input is a volume ``[B, C, X, Y, Z]``.

    Args:
        roi_size: the 2D window, e.g. ``[256, 256]``.
        spatial_dim: the axis the slices are taken along (0, 1 or 2 of ``X, Y, Z``; 2: axial for RAS volumes).
        in_channels: expected input channels (default: from the network's first convolution).
        check_output: refuse NaN/Inf network output.
        checkpoint: the file the weights come from, named in the messages.
        args, kwargs: passed to ``SlidingWindowInferer`` (``sw_batch_size``: slices per forward pass).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        *args: Any,
        spatial_dim: int = 2,
        in_channels: int | None = None,
        check_output: bool = True,
        checkpoint: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(spatial_dim, roi_size, *args, **kwargs)
        self.in_channels = in_channels
        self.check_output = check_output
        self.checkpoint = checkpoint

    def _spatial_dims(self, inputs: torch.Tensor) -> int:
        return 3

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any):
        return self._checked_call(super().__call__, inputs, network, *args, **kwargs)


def sliding_window_predict(
    network: torch.nn.Module,
    image: Any,
    roi_size: Sequence[int],
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    mode: str = "gaussian",
    in_channels: int | None = None,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = "cpu",
    argmax: bool = False,
    progress: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Predict a whole image with sliding windows in bounded memory.

    Args:
        network: the model (put in eval mode here; its parameters should be on ``sw_device``).
        image: ``[C, *spatial]`` or ``[B, C, *spatial]`` tensor/array; NaN/Inf or a wrong channel count raise
            ``ValueError``.
        roi_size: window size; its length gives the number of spatial dims.
        sw_device: where windows are computed (default: the network's device).
        device: where the full-size output is accumulated (default CPU).
        argmax: return the label map ``[B, 1, *spatial]`` (uint8 when < 256 classes) instead of logits.
        kwargs: passed to :class:`monai.inferers.SlidingWindowInferer` (e.g. ``buffer_steps``).
    """
    if sw_device is None:
        p = next(network.parameters(), None)
        sw_device = p.device if p is not None else torch.device("cpu")
    was_training = network.training
    network.eval()
    try:
        inferer = SafeSlidingWindowInferer(
            roi_size=list(roi_size),
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=mode,
            sw_device=sw_device,
            device=device,
            progress=progress,
            in_channels=in_channels,
            **kwargs,
        )
        out = inferer(image, network)
    finally:
        network.train(was_training)
    if argmax:
        return _chunked_argmax(out)
    return out


def _chunked_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``argmax`` over channels into uint8 (< 256 classes), slab by slab along the first spatial dim, so that
    no full-size int64 index tensor is ever allocated."""
    dtype = torch.uint8 if logits.shape[1] <= 256 else torch.int64
    labels = torch.empty((logits.shape[0], 1, *logits.shape[2:]), dtype=dtype, device=logits.device)
    step = max(1, logits.shape[2] // 16)
    for i in range(0, logits.shape[2], step):
        labels[:, :, i : i + step] = logits[:, :, i : i + step].argmax(dim=1, keepdim=True).to(dtype)
    return labels
