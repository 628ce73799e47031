"""The checks of one case of a datalist: paths, the image, the label(s), and the pair.

Files are decoded by :mod:`medurwkv_net.data.readers`; the pair (shape, affine, mask threshold) is checked by
:func:`medurwkv_net.data.pairs.check_pair`, the code ``prepare-data`` uses too; image channel conversion by
:func:`medurwkv_net.data.transforms.image_to_channels`, the code of ``EnsureChannelsd``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medurwkv_net.data.pairs import LabelPart, check_pair
from medurwkv_net.data.readers import Loaded, channel_first, from_memory, load_file
from medurwkv_net.data.transforms import image_to_channels

from .verify_report import CaseReport

__all__ = ["CheckOptions", "dataset_roots", "first_line", "verify_case"]

Resolve = Callable[[Any], Any]


@dataclass
class CheckOptions:
    """The settings of :func:`medurwkv_net.reliability.verify_datalist` that the case checks read.

    Attributes:
        allowed: allowed label values in index mode (None: not checked).
        allowed_desc: how messages name them.
        label_mode: ``"index"`` or ``"mask"``.
        label_threshold: the masks' threshold (None: automatic).
        allowed_channels: accepted image channel counts (None: not checked).
        affine_atol: tolerance of the image vs label affine comparison.
        check_duplicates: report a file (or content) used twice.
        spatial_dims: the number of spatial dimensions the network takes (None: not checked).
        roots: folders every file must lie in (empty: not checked).
        convert_to: images are converted to this many channels (``EnsureChannelsd``).
        eight_bit: 16-bit images are scaled to 8 bits (deeper ones refused).
    """

    allowed: set[int] | None
    allowed_desc: str
    label_mode: str
    label_threshold: float | None
    allowed_channels: set[int] | None
    affine_atol: float
    check_duplicates: bool
    spatial_dims: int | None = None
    roots: tuple[str, ...] = ()
    convert_to: int | None = None
    eight_bit: bool = False


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` of an exception."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def dataset_roots(dataset_dir: Any) -> tuple[str, ...]:
    """The absolute folders of ``dataset_dir`` (a folder, a list of folders or None)."""
    if dataset_dir is None:
        return ()
    folders = [dataset_dir] if isinstance(dataset_dir, (str, os.PathLike)) else list(dataset_dir)
    return tuple(dict.fromkeys(os.path.abspath(f) for f in folders))


def _real_path(path: Path) -> str | None:
    """The real path of ``path``, or None for a symlink loop."""
    try:
        return str(path.resolve())
    except RuntimeError:  # "Symlink loop from ..." (Python < 3.13)
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise


def _check_path(case: CaseReport, part: Path, what: str, opts: CheckOptions) -> bool:
    """Errors for a path outside the dataset folder or a symlink loop; True if the path may be read."""
    if opts.roots:
        here = os.path.abspath(part)
        if not any(os.path.commonpath([here, root]) == root for root in opts.roots):
            where = " or ".join(f"'{r}'" for r in opts.roots)
            case.error(
                "outside",
                f"{what} file '{part}' is outside the dataset folder {where} (it is '{here}'); "
                "keep the data inside dataset_dir or set dataset_dir to the folder holding it",
            )
            return False
    if os.path.islink(part) and _real_path(part) is None:
        case.error("symlink", f"{what} file '{part}' is a symbolic link loop; fix or remove the link")
        return False
    return True


def _check_image_values(case: CaseReport, arr: np.ndarray, what: str, channel_last: bool) -> None:
    """``nonfinite`` error (with the slices holding NaN/Inf) or ``constant_image`` warning."""
    floating = np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating)
    finite = np.isfinite(arr) if floating else None
    if finite is not None and not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        spatial = arr[..., 0] if channel_last and arr.ndim > 1 else arr
        bad_spatial = ~finite.all(axis=-1) if channel_last and arr.ndim > 1 else ~finite
        axis = spatial.ndim - 1
        other = tuple(range(axis))
        bad_slices = np.nonzero(bad_spatial.any(axis=other) if other else bad_spatial)[0].tolist()
        shown = bad_slices[:10] + (["..."] if len(bad_slices) > 10 else [])
        case.error(
            "nonfinite",
            f"{what} has {n_nan} NaN and {n_inf} Inf values in {len(bad_slices)} of {spatial.shape[axis]} "
            f"slices along axis {axis} (slices {shown})",
        )
        return
    if arr.size and np.all(arr == arr.flat[0]):
        case.warn("constant_image", f"{what} is constant (every value is {arr.flat[0]!r})")


def _check_label_values(case: CaseReport, arr: np.ndarray, allowed: set[int] | None, allowed_desc: str) -> None:
    """Index labels: integers in ``allowed``; records the classes present; warns on an empty label."""
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            case.error("nonfinite", f"label has {int((~np.isfinite(arr)).sum())} NaN/Inf values")
            return
        frac = arr != np.round(arr)
        if frac.any():
            vals = np.unique(arr[frac])[:5].tolist()
            case.error("label_values", f"label has {int(frac.sum())} non-integer values (e.g. {vals})")
            return
    ints = [int(v) for v in np.unique(arr).tolist()]
    case.label_classes = ints
    if allowed is not None:
        bad = [v for v in ints if v not in allowed]
        if bad:
            counts = {v: int((arr == v).sum()) for v in bad[:10]}
            case.error(
                "label_values",
                f"label values {bad[:10]}{'...' if len(bad) > 10 else ''} outside {allowed_desc} "
                f"(voxel counts {counts})",
            )
            return
    if ints == [0] or not ints:
        case.warn("empty_label", "label is empty (background 0 only)")


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _load_image_part(case: CaseReport, part: Path, opts: CheckOptions, seen: dict, digests: dict) -> Loaded | None:
    """Load one image file, recording duplicates (same path or same content); None when unusable."""
    if not _check_path(case, part, "image", opts):
        return None
    if not part.is_file() and not part.is_dir():  # a folder: a DICOM series
        case.error("missing", f"image file '{part}' does not exist")
        return None
    key = str(part.resolve())
    same_path = opts.check_duplicates and key in seen
    if same_path:
        case.error("duplicate", f"image file '{part}' is also used by {seen[key]}")
    elif opts.check_duplicates:
        seen[key] = case.case_id
    try:
        ld = load_file(part, hash_content=opts.check_duplicates)
    except Exception as e:  # readers raise many types for corrupt data; all mean "unreadable"
        case.error("unreadable", f"image file '{part}' cannot be read (truncated or corrupt?): {first_line(e)}")
        return None
    if opts.check_duplicates and ld.digest is not None and not same_path:
        if ld.digest in digests and digests[ld.digest] != case.case_id:
            case.error("duplicate", f"image file '{part}' has the same content as {digests[ld.digest]}")
        else:
            digests.setdefault(ld.digest, case.case_id)
    return ld


def _verify_image(
    case: CaseReport, image: Any, resolve: Resolve, opts: CheckOptions, seen: dict, digests: dict
) -> Loaded | None:
    """Load and check the image (one file, several files = channels, or an array); None if unusable."""
    parts = _as_list(image)
    loaded: list[Loaded] = []
    for part in parts:
        part = resolve(part)
        if isinstance(part, Path):
            ld = _load_image_part(case, part, opts, seen, digests)
            if ld is not None:
                loaded.append(ld)
            continue
        try:
            loaded.append(from_memory(part, has_channel_first=True))
        except Exception as e:
            case.error("entry", f"image is neither a path nor an array: {first_line(e)}")
    if len(loaded) != len(parts):
        return None
    shapes = {ld.spatial_shape for ld in loaded}
    if len(shapes) > 1:
        case.error("shape", f"image files have different spatial shapes {sorted(shapes)}")
        return None
    img = loaded[0]
    if opts.spatial_dims is not None and len(img.spatial_shape) != opts.spatial_dims:
        case.error(
            "dims",
            f"image has {len(img.spatial_shape)} spatial dimension(s) (spatial shape "
            f"{img.spatial_shape}, {img.channels} channel(s)), the network takes "
            f"{opts.spatial_dims}D images",
        )
        return None
    channels = sum(ld.channels for ld in loaded)
    if opts.convert_to is not None or opts.eight_bit:
        for ld, part in zip(loaded, parts):
            source = resolve(part)
            try:
                image_to_channels(
                    channel_first(ld),
                    opts.convert_to or ld.channels,
                    eight_bit=opts.eight_bit,
                    mode=ld.mode,
                    source=str(source) if isinstance(source, Path) else None,
                )
            except ValueError as e:
                case.error("channels", str(e))
    if opts.allowed_channels is not None and channels not in opts.allowed_channels:
        expected = sorted(opts.allowed_channels)
        case.error(
            "channels",
            f"image has {channels} channel(s), expected "
            f"{expected[0] if len(expected) == 1 else 'one of ' + str(expected)} "
            f"(spatial shape {img.spatial_shape})",
        )
    for i, ld in enumerate(loaded):
        what = "image" if len(loaded) == 1 else f"image part {i}"
        _check_image_values(case, ld.array, what, channel_last=ld.array.ndim > len(ld.spatial_shape))
    return img


def _load_label_part(
    case: CaseReport, part: Any, img: Loaded | None, image_paths: set, opts: CheckOptions
) -> Loaded | None:
    """Load one label file (or array); None (with the error recorded) when unusable."""
    if isinstance(part, Path):
        if not _check_path(case, part, "label", opts):
            return None
        if not part.is_file():
            case.error("missing", f"missing partner: label file '{part}' does not exist")
            return None
        if str(part.resolve()) in image_paths:
            case.error("entry", f"image and label are the same file '{part}'")
            return None
        try:
            return load_file(part)
        except Exception as e:
            case.error("unreadable", f"label file '{part}' cannot be read (truncated or corrupt?): {first_line(e)}")
            return None
    try:
        arr = np.asarray(part.detach().cpu() if hasattr(part, "detach") else part)
    except Exception as e:
        case.error("entry", f"label is neither a path nor an array: {first_line(e)}")
        return None
    has_c = img is not None and arr.ndim == len(img.spatial_shape) + 1
    return from_memory(arr, has_channel_first=has_c)


def verify_case(
    case: CaseReport, image: Any, label: Any, resolve: Resolve, opts: CheckOptions, seen: dict, digests: dict
) -> None:
    """Check one case and record its findings in ``case``.

    Args:
        case: the report of the case (filled in place).
        image: the image entry (a path, a list of paths = channels, or an array).
        label: the label entry (a path, a list of mask paths to unite, an array, or None).
        resolve: turns a path entry into a :class:`~pathlib.Path` (relative paths against the base folder).
        opts: the settings.
        seen: real path -> case id of every image so far (duplicates).
        digests: content digest -> case id of every image so far (duplicates).
    """
    img = _verify_image(case, image, resolve, opts, seen, digests)
    if label is None:
        return
    image_paths = {_real_path(resolve(p)) for p in _as_list(image) if isinstance(resolve(p), Path)} - {None}
    parts = [resolve(p) for p in _as_list(label)]
    if opts.label_mode == "index" and len(parts) != 1:
        case.error("entry", f"label_mode 'index' takes one label file, got {len(parts)}")
        return
    labs = [_load_label_part(case, p, img, image_paths, opts) for p in parts]
    if any(lab is None for lab in labs):
        return
    many = len(parts) > 1
    label_parts = [
        LabelPart(lab, f"label '{part}'" if many else "label", str(part) if isinstance(part, Path) else "")
        for lab, part in zip(labs, parts)
        if lab is not None
    ]
    mask = opts.label_mode == "mask"
    pair = check_pair(img, label_parts, mask=mask, threshold=opts.label_threshold, affine_atol=opts.affine_atol)
    for check, message in pair.errors:
        case.error(check, message)
    if any(check == "shape" for check, _ in pair.errors):
        return
    if mask:
        if pair.foreground is not None:
            case.label_classes = [0, 1] if pair.foreground else [0]
            if pair.empty_note:
                case.warn("empty_label", pair.empty_note)
        return
    lab = label_parts[0].loaded
    if lab.channels > 1:
        same = all(np.array_equal(lab.array[..., 0], lab.array[..., c]) for c in range(1, lab.channels))
        if not same:
            case.error("channels", f"label has {lab.channels} different channels, expected one label map")
            return
        lab_arr = lab.array[..., 0]
    else:
        lab_arr = lab.array
    _check_label_values(case, lab_arr, opts.allowed, opts.allowed_desc)
