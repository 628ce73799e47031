"""MONAI transforms for the label and image conventions of the public releases.

- :class:`LoadMaskd` reads the mask file(s) of a case with MONAI's ``LoadImage`` and turns them into
  one binary foreground channel: colour channels and several files (BUSI ``NAME_mask.png`` +
  ``NAME_mask_1.png``, in any mix of grey and colour modes) are united, JPEG masks (Kvasir-SEG) are
  thresholded, instance ids (GlaS) become ``id > 0`` with ``threshold=0``.
- :class:`EnsureChannelsd` gives images the channel count the network expects (grey -> RGB by
  repetition, RGB -> grey by the mean, alpha dropped).
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

__all__ = ["LoadMask", "LoadMaskd", "EnsureChannels", "EnsureChannelsd", "binarize_mask"]


def binarize_mask(mask: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Channel-first mask ``[C, *spatial]`` -> boolean ``[1, *spatial]``: foreground where any channel
    exceeds ``threshold``. ``threshold=None`` (automatic): masks holding only 0/1 use ``> 0``, all others
    ``> 127`` (half the 8-bit range; robust to JPEG ringing)."""
    m = torch.as_tensor(mask)
    if threshold is None:
        threshold = 0 if (m.numel() == 0 or float(m.max()) <= 1) else 127
    return (m > threshold).any(dim=0, keepdim=True)


class LoadMask(Transform):
    """Load one mask file or a list of mask files (to be united) as a ``[1, *spatial]`` uint8 MetaTensor
    holding 0/1, with the metadata of the first file (so its original size is known)."""

    def __init__(self, threshold: float | None = None, reader=None) -> None:
        self.threshold = threshold
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)

    def __call__(self, filename) -> MetaTensor:
        files = ([filename] if isinstance(filename, (str, bytes)) or not isinstance(filename, Sequence)
                 else list(filename))
        if not files:
            raise ValueError("LoadMask: empty list of mask files")
        out, ref, first = None, None, None
        for f in files:
            img = self.loader(f)
            fg = binarize_mask(img, self.threshold)
            if out is None:
                out, ref, first = fg, img, (f, tuple(img.shape[1:]))
            elif fg.shape != out.shape:
                raise ValueError(f"LoadMask: mask '{f}' has spatial shape {tuple(fg.shape[1:])} but "
                                 f"'{first[0]}' of the same case has {first[1]}")
            else:
                out = out | fg
        return MetaTensor(out.to(torch.uint8), meta=dict(ref.meta))  # meta holds the affine


class LoadMaskd(MapTransform):
    """Dictionary version of :class:`LoadMask` (the value of each key is a path or a list of paths)."""

    def __init__(self, keys: KeysCollection, threshold: float | None = None, reader=None,
                 allow_missing_keys: bool = False) -> None:
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
    """Channel-first image -> ``channels`` channels. An image that already has ``channels`` channels
    (e.g. a multi-modal MSD volume) is returned as is; otherwise 1 -> 3 repeats, 3 -> 1 averages, and a
    trailing alpha channel (LA, RGBA) is dropped first."""

    def __init__(self, channels: int) -> None:
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"EnsureChannels: channels must be a positive int, got {channels!r}")
        self.channels = channels

    def __call__(self, img):
        c = img.shape[0]
        if c == self.channels:
            return img
        if c in (2, 4):  # grey + alpha, RGB + alpha
            img = img[: c - 1]
            c -= 1
        if c == self.channels:
            return img
        if c == 1 and self.channels == 3:
            return img.repeat(3, *([1] * (img.ndim - 1))) if isinstance(img, torch.Tensor) else np.repeat(img, 3, 0)
        if c == 3 and self.channels == 1:
            return img.float().mean(0, keepdim=True) if isinstance(img, torch.Tensor) else img.mean(0, keepdims=True)
        raise ValueError(f"EnsureChannels: cannot turn an image with {img.shape[0]} channels "
                         f"(shape {tuple(img.shape)}) into {self.channels} channel(s)")


class EnsureChannelsd(MapTransform):
    """Dictionary version of :class:`EnsureChannels`."""

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = EnsureChannels(channels)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.op(d[key])
            except ValueError as e:
                src = getattr(d[key], "meta", {}).get("filename_or_obj", "")
                raise ValueError(f"EnsureChannelsd key '{key}'{f' ({src})' if src else ''}: {e}") from e
        return d
