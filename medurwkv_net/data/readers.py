"""Strict file reading with MONAI's readers: what prepare-data and verify-data decode.

``PILReader`` for 2D bitmaps, ``NibabelReader`` for NIfTI, ``NumpyReader`` for .npy/.npz, and ``LoadImage``
(which picks a reader) for anything else, so that what is checked is what the training pipeline loads. A
truncated bitmap is always an error here, even when a library has set ``ImageFile.LOAD_TRUNCATED_IMAGES``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Loaded", "channel_first", "from_memory", "load_file", "read_array"]

_PIL_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
_NIFTI_EXT = (".nii", ".nii.gz", ".img", ".hdr")
_NUMPY_EXT = (".npy", ".npz")


@dataclass
class Loaded:
    """A decoded file (or array) with what the checks need to know about it.

    Attributes:
        array: the values, spatial dimensions first and the channel last (if any).
        channels: number of channels (1 without a channel dimension).
        spatial_shape: the spatial shape, in the reader's order.
        affine: the voxel-to-world matrix (NIfTI and other volumes), else None.
        digest: sha1 of the file's bytes when asked for (duplicate detection), else None.
        mode: PIL mode of a bitmap (``L``, ``RGB``, ``RGBA``, ``I;16``, ...), else None.
    """

    array: np.ndarray
    channels: int
    spatial_shape: tuple[int, ...]
    affine: np.ndarray | None
    digest: str | None
    mode: str | None = None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _reader_for(path: Path) -> Any:
    from monai.data import NibabelReader, NumpyReader, PILReader

    ext = _suffix(path)
    if ext in _PIL_EXT:
        return PILReader()
    if ext in _NIFTI_EXT:
        return NibabelReader()
    if ext in _NUMPY_EXT:
        return NumpyReader()
    return None


def read_array(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read one file with the matching MONAI reader, forcing the pixel data to be decoded.

    Args:
        path: the file (or a DICOM series folder, read by ``LoadImage``).

    Returns:
        The array as the reader gives it and the reader's metadata.

    Raises:
        OSError: the file is truncated or corrupt (or another error of the reader; readers raise many types).
    """
    path = Path(path)
    reader = _reader_for(path)
    if reader is None:
        from monai.transforms import LoadImage

        data, meta = LoadImage(image_only=False)(str(path))
        return np.asarray(data), dict(meta)
    from PIL import ImageFile

    # a process-wide ImageFile.LOAD_TRUNCATED_IMAGES=True (set by some libraries) would let truncated
    # bitmaps decode silently with grey filler: always decode strictly here
    strict_before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = reader.read(str(path))
        arr, meta = reader.get_data(img)
        arr = np.asarray(arr)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = strict_before
    return arr, dict(meta)


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    for part in sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]:
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_file(path: str | os.PathLike, hash_content: bool = False) -> Loaded:
    """Decode ``path`` with :func:`read_array` into a :class:`Loaded` (channel moved last).

    Args:
        path: the file.
        hash_content: also compute the sha1 of its bytes (``Loaded.digest``).

    Raises:
        OSError: the file is truncated or corrupt (or another error of the reader).
    """
    path = Path(path)
    digest = _digest(path) if hash_content else None
    arr, meta = read_array(path)
    cdim = meta.get("original_channel_dim", float("nan"))
    has_channel = isinstance(cdim, (int, np.integer)) and not isinstance(cdim, bool)
    if has_channel and int(cdim) != -1:
        arr = np.moveaxis(arr, int(cdim), -1)
    channels = int(arr.shape[-1]) if has_channel else 1
    spatial = tuple(int(s) for s in (arr.shape[:-1] if has_channel else arr.shape))
    affine = meta.get("affine")
    affine = None if affine is None else np.asarray(affine, dtype=np.float64)
    mode = meta.get("mode") if isinstance(meta.get("mode"), str) else None
    return Loaded(arr, channels, spatial, affine, digest, mode)


def from_memory(x: Any, has_channel_first: bool) -> Loaded:
    """A :class:`Loaded` of an array or tensor given in a datalist instead of a file.

    Args:
        x: the array (numpy or torch).
        has_channel_first: its first dimension is the channel.
    """
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if has_channel_first and arr.ndim >= 2:
        arr = np.moveaxis(arr, 0, -1)
        return Loaded(arr, int(arr.shape[-1]), tuple(arr.shape[:-1]), None, None)
    return Loaded(arr, 1, tuple(arr.shape), None, None)


def channel_first(loaded: Loaded) -> np.ndarray:
    """The values of ``loaded`` as ``[channels, *spatial]`` (what MONAI's transforms take)."""
    arr = loaded.array
    return np.moveaxis(arr, -1, 0) if arr.ndim > len(loaded.spatial_shape) else arr[None]
