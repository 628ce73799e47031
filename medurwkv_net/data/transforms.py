"""MONAI transforms for the label and image conventions of the public releases, and the conversions
behind them (used by training, evaluation, inference, ``prepare-data`` and ``verify-data`` alike).

- :func:`mask_foreground` / :class:`LoadMaskd`: the mask file(s) of a case -> one binary foreground
  channel. An alpha channel (LA, RGBA masks) is dropped; foreground is where any colour channel exceeds
  the threshold; several files (BUSI ``NAME_mask.png`` + ``NAME_mask_1.png``, in any mix of grey and
  colour modes) are united. The automatic threshold follows the value range: 0/1 masks ``> 0``, 8-bit
  masks (PNG, and JPEG masks with compression noise) ``> 127``, 16-bit masks ``> 32767``; GlaS instance ids
  use ``threshold=0`` (any id > 0).
- :func:`image_to_channels` / :class:`EnsureChannelsd`: images -> the network's channel count (alpha
  dropped, grey -> RGB by repetition, RGB -> grey by the mean) and, with ``eight_bit``, 16-bit images
  scaled to the 8-bit range (value * 255 / 65535) so that the bundles' ``/255`` normalisation applies;
  other bit depths (32-bit, floating point) are refused with the file named.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

__all__ = [
    "LoadMask",
    "LoadMaskd",
    "EnsureChannels",
    "EnsureChannelsd",
    "binarize_mask",
    "image_to_channels",
    "mask_foreground",
    "mask_threshold",
]

_ALPHA_CHANNELS = (2, 4)  # LA, RGBA: the last channel is transparency, not data
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _source(x, source: str | None) -> str:
    if source:
        return f"'{source}'"
    meta = getattr(x, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return f"'{name}'" if name else "the array"


_WIDE_UINTS = tuple(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n))


def _as_tensor(x) -> torch.Tensor:
    """A tensor that torch's reductions accept (16-bit and wider unsigned ints as int64)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.array(x))
    return t.to(torch.int64) if t.dtype in _WIDE_UINTS else t


def _max(x) -> float:
    if (x.numel() if isinstance(x, torch.Tensor) else np.size(x)) == 0:
        return 0.0
    return float(_as_tensor(x).max() if isinstance(x, torch.Tensor) else np.max(x))


def _min(x) -> float:
    if (x.numel() if isinstance(x, torch.Tensor) else np.size(x)) == 0:
        return 0.0
    return float(_as_tensor(x).min() if isinstance(x, torch.Tensor) else np.min(x))


def mask_threshold(mask) -> float:
    """The automatic threshold of a mask from its value range: 0/1 masks ``0``, 8-bit masks (incl. JPEG
    noise) ``127``, 16-bit masks ``32767``."""
    vmax = _max(mask)
    return 0.0 if vmax <= 1 else (127.0 if vmax <= 255 else 32767.0)


def mask_foreground(mask, threshold: float | None = None, source: str | None = None) -> torch.Tensor:
    """Channel-first mask ``[C, *spatial]`` -> boolean ``[1, *spatial]``: foreground where any colour channel
    exceeds ``threshold`` (``None``: :func:`mask_threshold`). A trailing alpha channel (2 or 4 channels) is
    dropped; a mask whose shape is drawn in the alpha channel only is refused, naming ``source``."""
    m = _as_tensor(mask)
    if m.ndim < 2:
        raise ValueError(f"mask {_source(mask, source)} has shape {tuple(m.shape)}: expected [channels, *spatial]")
    alpha = None
    if m.shape[0] in _ALPHA_CHANNELS:
        alpha, m = m[-1], m[:-1]
    if torch.is_floating_point(m) and not bool(torch.isfinite(m).all()):
        raise ValueError(f"mask {_source(mask, source)} holds NaN/Inf values; save it as an 8-bit 0/255 mask")
    vmax = _max(m)
    if vmax > 65535:
        raise ValueError(
            f"mask {_source(mask, source)} holds values up to {vmax:g}: only 0/1, 8-bit and 16-bit "
            "masks are read; save it as an 8-bit 0/255 mask"
        )
    thr = mask_threshold(m) if threshold is None else threshold
    fg = (m > thr).any(dim=0, keepdim=True)
    if alpha is not None and not bool(fg.any()) and alpha.numel() and float(alpha.min()) != float(alpha.max()):
        raise ValueError(
            f"mask {_source(mask, source)} draws its shape only in the alpha (transparency) channel, "
            "its colour channels are empty; save it as a grey 0/255 mask (shape = 255)"
        )
    return fg


def binarize_mask(mask: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Alias of :func:`mask_foreground` (kept for existing callers)."""
    return mask_foreground(mask, threshold)


def image_to_channels(img, channels: int, eight_bit: bool = False, mode: str | None = None, source: str | None = None):
    """Channel-first image -> ``channels`` channels (tensor in, tensor out; numpy in, numpy out).

    An image that already has ``channels`` channels (e.g. a multi-modal MSD volume) keeps them; otherwise a
    trailing alpha channel (LA, RGBA) is dropped, then 1 -> 3 repeats and 3 -> 1 averages. With ``eight_bit``
    (the photo bundles), a 16-bit image (PIL mode ``I;16``/``I``, or values above 255) is scaled to the 8-bit
    range; a floating-point or deeper image is refused. ``mode`` defaults to the PIL mode in the image's
    metadata; ``source`` names the file in messages."""
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    where = _source(img, source)
    if mode is None:
        meta = getattr(img, "meta", None)
        mode = meta.get("mode") if isinstance(meta, Mapping) else None
        mode = mode if isinstance(mode, str) else None
    c0 = c = img.shape[0]
    if c != channels:
        if c in _ALPHA_CHANNELS:
            img = img[: c - 1]
            c -= 1
        if c == channels:
            pass
        elif c == 1 and channels == 3:
            img = img.repeat(3, *([1] * (img.ndim - 1))) if isinstance(img, torch.Tensor) else np.repeat(img, 3, 0)
        elif c == 3 and channels == 1:
            img = img.float().mean(0, keepdim=True) if isinstance(img, torch.Tensor) else img.mean(0, keepdims=True)
        else:
            raise ValueError(
                f"image {where} has {c0} channels (shape {tuple(img.shape)}); the network takes "
                f"{channels}: only grey (1), grey+alpha (2), RGB (3) and RGBA (4) images are converted"
            )
    if eight_bit:
        img = _to_eight_bit(img, mode, where)
    return img


def _to_eight_bit(img, mode: str | None, where: str):
    vmax = _max(img)
    vmin = _min(img)
    if mode == "F" or vmax > 65535 or vmin < 0:
        raise ValueError(
            f"image {where} (PIL mode {mode or 'unknown'}) holds values from {vmin:g} to {vmax:g}: "
            "the bundle reads 8-bit and 16-bit images only; convert it to 8-bit (0-255)"
        )
    if mode in _SIXTEEN_BIT_MODES or vmax > 255:
        if isinstance(img, torch.Tensor):
            return img.float() * (255.0 / 65535.0)
        return img.astype(np.float32) * (255.0 / 65535.0)
    return img


class LoadMask(Transform):
    """Load one mask file or a list of mask files (to be united) as a ``[1, *spatial]`` uint8 MetaTensor
    holding 0/1 (:func:`mask_foreground` per file), with the metadata of the first file (so its original
    size is known).

    Args:
        threshold: foreground is ``value > threshold`` (``None``: :func:`mask_threshold`).
        reader: MONAI image reader (``None``: chosen by the file's extension).
    """

    def __init__(self, threshold: float | None = None, reader=None) -> None:
        self.threshold = threshold
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)

    def __call__(self, filename) -> MetaTensor:
        files: list[Any] = (
            [filename] if isinstance(filename, (str, bytes)) or not isinstance(filename, Sequence) else list(filename)
        )
        if not files:
            raise ValueError("LoadMask: empty list of mask files")
        out: torch.Tensor | None = None
        ref: Any = None
        first: tuple[Any, tuple[int, ...]] = (None, ())  # the first file and its spatial shape
        for f in files:
            img = self.loader(f)
            fg = mask_foreground(img, self.threshold, source=str(f))
            if out is None:
                out, ref, first = fg, img, (f, tuple(img.shape[1:]))
            elif fg.shape != out.shape:
                raise ValueError(
                    f"LoadMask: mask '{f}' has spatial shape {tuple(fg.shape[1:])} but "
                    f"'{first[0]}' of the same case has {first[1]}"
                )
            else:
                out = out | fg
        assert out is not None  # files is not empty
        return MetaTensor(out.to(torch.uint8), meta=dict(ref.meta))  # meta holds the affine


class LoadMaskd(MapTransform):
    """Dictionary version of :class:`LoadMask` (the value of each key is a path or a list of paths).

    Args:
        keys: the mask keys.
        threshold: foreground is ``value > threshold`` (``None``: :func:`mask_threshold`).
        reader: MONAI image reader (``None``: chosen by the file's extension).
        allow_missing_keys: skip keys missing from the data instead of raising.
    """

    def __init__(
        self, keys: KeysCollection, threshold: float | None = None, reader=None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMask(threshold=threshold, reader=reader)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.loader(d[key])
            except ValueError as e:
                raise ValueError(f"LoadMaskd key '{key}': {e}") from e
        return d


class EnsureChannels(Transform):
    """Channel-first image -> ``channels`` channels with :func:`image_to_channels` (alpha dropped, grey
    repeated, RGB averaged; ``eight_bit``: 16-bit images scaled to the 8-bit range, deeper ones refused).

    Args:
        channels: channels of the output.
        eight_bit: scale 16-bit images to the 8-bit range (deeper ones are refused).
    """

    def __init__(self, channels: int, eight_bit: bool = False) -> None:
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"EnsureChannels: channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.eight_bit = bool(eight_bit)

    def __call__(self, img):
        return image_to_channels(img, self.channels, eight_bit=self.eight_bit)


class EnsureChannelsd(MapTransform):
    """Dictionary version of :class:`EnsureChannels`.

    Args:
        keys: the image keys.
        channels: channels of the output.
        eight_bit: scale 16-bit images to the 8-bit range (deeper ones are refused).
        allow_missing_keys: skip keys missing from the data instead of raising.
    """

    def __init__(
        self, keys: KeysCollection, channels: int, eight_bit: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = EnsureChannels(channels, eight_bit=eight_bit)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.op(d[key])
            except ValueError as e:
                raise ValueError(f"EnsureChannelsd key '{key}': {e}") from e
        return d
