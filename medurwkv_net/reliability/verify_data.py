"""Dataset verification: open every image/label pair and report, per case, everything that would make
training fail mid-epoch or silently learn from garbage.

Checks (``Finding.check`` codes): ``entry`` (malformed datalist entry), ``missing`` (file or partner
missing), ``unreadable`` (truncated / corrupt PNG, JPEG, BMP, NIfTI, ...), ``shape`` (image vs label
spatial shape), ``affine`` (image vs label spacing/orientation beyond a tolerance), ``channels``
(image channel count), ``label_values`` (values outside ``range(num_classes)`` or not integers),
``nonfinite`` (NaN/Inf intensities), ``duplicate`` (same file or identical content twice).
Warnings: ``empty_label`` (only background), ``constant_image``.

Files are read with MONAI's readers (``PILReader`` for 2D bitmaps, ``NibabelReader`` for NIfTI,
``NumpyReader`` for .npy/.npz) so that what is verified is what the training pipeline loads.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from ignite.engine import Engine, Events

from .atomic import atomic_write_json
from .errors import DataVerificationError

__all__ = [
    "Finding",
    "CaseReport",
    "VerificationReport",
    "verify_datalist",
    "VerifyDataHandler",
    "verify_data_cli",
    "read_array",
]

logger = logging.getLogger(__name__)

_PIL_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
_NIFTI_EXT = (".nii", ".nii.gz", ".img", ".hdr")
_NUMPY_EXT = (".npy", ".npz")


@dataclass
class Finding:
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


@dataclass
class CaseReport:
    case_id: str
    image: Any = None
    label: Any = None
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    label_classes: list[int] | None = None  # class values present in the label (None: not read)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, check: str, message: str) -> None:
        self.errors.append(Finding(check, message))

    def warn(self, check: str, message: str) -> None:
        self.warnings.append(Finding(check, message))

    def to_dict(self) -> dict:
        return {
            "case": self.case_id,
            "image": _describe(self.image),
            "label": _describe(self.label),
            "errors": [vars(f) for f in self.errors],
            "warnings": [vars(f) for f in self.warnings],
        }


@dataclass
class VerificationReport:
    cases: list[CaseReport]
    num_classes: int | None = None
    problems: list[str] = field(default_factory=list)  # errors not tied to one case (e.g. empty list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.cases)

    @property
    def failed(self) -> list[CaseReport]:
        return [c for c in self.cases if not c.ok]

    @property
    def warned(self) -> list[CaseReport]:
        return [c for c in self.cases if c.warnings]

    def counts(self) -> dict[str, int]:
        """Number of findings per check code (errors and warnings)."""
        out: dict[str, int] = {}
        for c in self.cases:
            for f in c.errors + c.warnings:
                out[f.check] = out.get(f.check, 0) + 1
        return out

    def table(self) -> str:
        """Cases, cases with errors and cases with warnings per split (the datalist key of each case)."""
        rows: dict[str, list[int]] = {}
        for c in self.cases:
            row = rows.setdefault(c.case_id.rsplit("[", 1)[0], [0, 0, 0])
            row[0] += 1
            row[1] += bool(c.errors)
            row[2] += bool(c.warnings)
        width = max([5] + [len(k) for k in rows])
        lines = [f"{'split':<{width}}  {'cases':>6}  {'errors':>6}  {'warnings':>8}"]
        lines += [f"{k:<{width}}  {a:>6}  {b:>6}  {w:>8}" for k, (a, b, w) in rows.items()]
        return "\n".join(lines)

    def summary(self, max_cases: int = 100) -> str:
        lines = [
            f"verify-data: {len(self.cases)} case(s), {len(self.failed)} with errors, "
            f"{len(self.warned)} with warnings" + (f"; findings per check: {self.counts()}" if self.counts() else "")
        ]
        lines += [f"ERROR {p}" for p in self.problems]
        shown = 0
        for c in self.cases:
            if not (c.errors or c.warnings):
                continue
            if shown >= max_cases:
                lines.append(f"... {len(self.failed) + len(self.warned) - shown} more case(s) not shown")
                break
            shown += 1
            tag = "ERROR" if c.errors else "WARN "
            lines.append(f"{tag} {c.case_id} (image={_describe(c.image)}, label={_describe(c.label)})")
            lines += [f"    - {f}" for f in c.errors]
            lines += [f"    ~ {f}" for f in c.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "num_cases": len(self.cases),
            "num_failed": len(self.failed),
            "num_warned": len(self.warned),
            "counts": self.counts(),
            "cases": [c.to_dict() for c in self.cases if c.errors or c.warnings],
        }

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise DataVerificationError(self.summary(), report=self)


def _describe(x: Any) -> Any:
    if x is None or isinstance(x, (str, os.PathLike)):
        return None if x is None else str(x)
    if isinstance(x, (list, tuple)):
        return [_describe(v) for v in x]
    if hasattr(x, "shape"):
        return f"<array {tuple(x.shape)}>"
    return repr(x)


# ----------------------------------------------------------------------------------------- reading
@dataclass
class _Loaded:
    array: np.ndarray  # spatial dims first, channel last (if any)
    channels: int
    spatial_shape: tuple[int, ...]
    affine: np.ndarray | None
    digest: str | None
    mode: str | None = None  # PIL mode of a bitmap (L, RGB, RGBA, I;16, ...)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _reader_for(path: Path):
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

    Raises ``OSError``/``ValueError`` subclasses from the readers for truncated or corrupt files.
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


def _load_one(path: Path, hash_content: bool) -> _Loaded:
    digest = None
    if hash_content:
        h = hashlib.sha1()
        for part in sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        digest = h.hexdigest()
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
    return _Loaded(arr, channels, spatial, affine, digest, mode)


def _from_memory(x: Any, has_channel_first: bool) -> _Loaded:
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if has_channel_first and arr.ndim >= 2:
        arr = np.moveaxis(arr, 0, -1)
        return _Loaded(arr, int(arr.shape[-1]), tuple(arr.shape[:-1]), None, None)
    return _Loaded(arr, 1, tuple(arr.shape), None, None)


def root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain (MONAI wraps a failing config expression in ``RuntimeError: Failed
    to evaluate ...``; the user needs the error underneath)."""
    seen = {id(e)}
    while True:
        nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if nxt is None or id(nxt) in seen:
            return e
        seen.add(id(nxt))
        e = nxt


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# ------------------------------------------------------------------------------------------ checks
def _check_image_values(case: CaseReport, arr: np.ndarray, what: str, channel_last: bool) -> None:
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.complexfloating):
        finite = None
    else:
        finite = np.isfinite(arr)
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


def _check_label_values(
    case: CaseReport, arr: np.ndarray, allowed: set[int] | None, allowed_desc: str
) -> None:
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            case.error("nonfinite", f"label has {int((~np.isfinite(arr)).sum())} NaN/Inf values")
            return
        frac = arr != np.round(arr)
        if frac.any():
            vals = np.unique(arr[frac])[:5].tolist()
            case.error("label_values", f"label has {int(frac.sum())} non-integer values (e.g. {vals})")
            return
    values = np.unique(arr)
    ints = [int(v) for v in values.tolist()]
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


def _spacing(affine: np.ndarray) -> list[float]:
    k = affine.shape[0] - 1
    return [round(float(np.linalg.norm(affine[:k, i])), 6) for i in range(k)]


@dataclass
class _Options:
    allowed: set[int] | None
    allowed_desc: str
    label_mode: str
    label_threshold: float | None
    allowed_channels: set[int] | None
    affine_atol: float
    check_duplicates: bool
    spatial_dims: int | None = None
    roots: tuple[str, ...] = ()
    convert_to: int | None = None  # images are converted to this many channels (EnsureChannels)
    eight_bit: bool = False


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


def _roots(dataset_dir: Any) -> tuple[str, ...]:
    if dataset_dir is None:
        return ()
    folders = [dataset_dir] if isinstance(dataset_dir, (str, os.PathLike)) else list(dataset_dir)
    return tuple(dict.fromkeys(os.path.abspath(f) for f in folders))


def _check_path(case: CaseReport, part: Path, what: str, opts: _Options) -> bool:
    """Errors for a path outside the dataset folder or a symlink loop; True if the path may be read."""
    if opts.roots:
        here = os.path.abspath(part)
        if not any(os.path.commonpath([here, root]) == root for root in opts.roots):
            where = " or ".join(f"'{r}'" for r in opts.roots)
            case.error("outside", f"{what} file '{part}' is outside the dataset folder {where} (it is '{here}'); "
                                  "keep the data inside dataset_dir or set dataset_dir to the folder holding it")
            return False
    if os.path.islink(part) and _real_path(part) is None:
        case.error("symlink", f"{what} file '{part}' is a symbolic link loop; fix or remove the link")
        return False
    return True


def _channel_first(ld: _Loaded) -> np.ndarray:
    arr = ld.array
    return np.moveaxis(arr, -1, 0) if arr.ndim > len(ld.spatial_shape) else arr[None]


def _check_mask_values(case: CaseReport, ld: _Loaded, threshold: float | None, what: str,
                       source: str) -> np.ndarray | None:
    """``label_mode="mask"``: the foreground the training pipeline takes (:func:`mask_foreground`, the
    implementation ``LoadMaskd`` uses: alpha dropped, any colour channel above the threshold)."""
    from medurwkv_net.data.transforms import mask_foreground

    try:
        return mask_foreground(_channel_first(ld), threshold, source=source).numpy()
    except ValueError as e:
        case.error("label_values", f"{what}: {e}")
        return None


def verify_datalist(
    datalist: Sequence[Any] | Mapping[str, Sequence[Any]],
    num_classes: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    image_channels: int | None = None,
    allowed_channels: Iterable[int] | None = None,
    channel_def: Mapping[Any, str] | None = None,
    label_values: Iterable[int] | None = None,
    label_mode: str = "index",
    label_threshold: float | None = None,
    affine_atol: float = 1e-3,
    require_label: bool = True,
    check_duplicates: bool = True,
    base_dir: str | os.PathLike | None = None,
    raise_on_error: bool = False,
    spatial_dims: int | Mapping[str, int] | None = None,
    dataset_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    convert_channels: bool = False,
    eight_bit: bool = False,
    empty_labels_expected: Sequence[str] = (),
) -> VerificationReport:
    """Open every case of ``datalist`` and check it; return a :class:`VerificationReport`.

    Args:
        datalist: list of dicts ``{image_key: path | [paths] | array, label_key: path | [paths] | array}`` (or
            plain image paths), or a mapping ``{"train": [...], "validate": [...]}`` (duplicates are then also
            found across the lists, e.g. a validation case that is also a training case).
        num_classes: allowed label values are ``range(num_classes)``; default ``len(channel_def)``.
        image_channels: expected number of image channels (``None``: not checked).
        allowed_channels: channel counts the pipeline accepts (e.g. ``[1, 2, 3, 4]`` when it converts grey/RGB
            and drops alpha); overrides ``image_channels``.
        channel_def: ``{value: name}`` of the output (from the bundle metadata), used in messages.
        label_values: explicit allowed label values in ``"index"`` mode (overrides ``num_classes``).
        label_mode: ``"index"``: label files hold class indices; ``"mask"``: binary masks (a list of files is
            united) whose foreground is ``value > label_threshold`` (None: 0/1 masks > 0, others > 127).
        affine_atol: tolerance (in mm) for the image vs label affine comparison.
        require_label: a case without ``label_key`` is an error ("missing partner").
        base_dir: relative paths are resolved against it.
        raise_on_error: raise :class:`DataVerificationError` (with the summary) if any case fails.
        spatial_dims: number of spatial dimensions the network takes (``len(spatial_size)``); an image with
            another number (a 3D or 4D volume in a 2D pipeline) is an error. A mapping gives each list of a
            mapping ``datalist`` its own (e.g. 2D training slices and 3D test volumes); lists it does not name
            are not checked.
        dataset_dir: every file must lie inside this folder, or one of these folders (a path leaving it with
            ``../`` is an error).
        convert_channels: images are brought to ``image_channels`` by the pipeline's ``EnsureChannelsd`` (grey
            repeated, RGB averaged, alpha dropped): check that this conversion succeeds, with the same code,
            instead of requiring exactly ``image_channels``.
        eight_bit: the pipeline scales 16-bit images to the 8-bit range (``EnsureChannelsd(eight_bit=True)``);
            images it refuses (32-bit, floating point) are errors.
        empty_labels_expected: names of the lists of a mapping ``datalist`` whose empty labels are intended
            (e.g. background slices kept on purpose): no ``empty_label`` warning for them.
    """
    if label_mode not in ("index", "mask"):
        raise ValueError(f"label_mode must be 'index' or 'mask', got {label_mode!r}")
    if channel_def is not None and num_classes is None:
        num_classes = len(channel_def)
    if label_mode == "mask":
        if num_classes is not None and int(num_classes) != 2:
            raise ValueError(f"label_mode='mask' gives 2 classes (background/foreground), num_classes={num_classes}")
        allowed, allowed_desc = None, ""
    elif label_values is not None:
        allowed = {int(v) for v in label_values}
        allowed_desc = f"the allowed values {sorted(allowed)}"
    elif num_classes is not None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        allowed = set(range(int(num_classes)))
        allowed_desc = f"range({int(num_classes)})"
        if channel_def:
            allowed_desc += " (channel_def " + ", ".join(f"{k}={v}" for k, v in channel_def.items()) + ")"
    else:
        allowed, allowed_desc = None, ""
    if allowed_channels is not None:
        chans: set[int] | None = {int(c) for c in allowed_channels}
    elif image_channels is not None:
        chans = {int(image_channels)}
    else:
        chans = None
    convert_to = None
    if convert_channels:
        if image_channels is None:
            raise ValueError("convert_channels=True needs image_channels (the channels the network takes)")
        convert_to, chans = int(image_channels), None
    dims_of = dict(spatial_dims) if isinstance(spatial_dims, Mapping) else None
    opts = _Options(allowed, allowed_desc, label_mode, label_threshold, chans, float(affine_atol),
                    bool(check_duplicates), None if spatial_dims is None or dims_of is not None else int(spatial_dims),
                    _roots(dataset_dir), convert_to, bool(eight_bit))

    if isinstance(datalist, Mapping):
        groups = [(str(k), v) for k, v in datalist.items()]
    else:
        groups = [("case", datalist)]
    for name, items in groups:
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise TypeError(f"datalist '{name}' must be a list of cases, got {type(items).__name__}")

    base = Path(base_dir) if base_dir is not None else None
    seen_paths: dict[str, str] = {}
    seen_digests: dict[str, str] = {}
    reports: list[CaseReport] = []
    problems = [f"datalist '{name}' is empty: no case to train/validate on (wrong dataset_dir?)"
                for name, items in groups if len(items) == 0]

    def resolve(p: Any) -> Any:
        if isinstance(p, (str, os.PathLike)):
            q = Path(p).expanduser()
            return base / q if base is not None and not q.is_absolute() else q
        return p

    for gname, items in groups:
        if dims_of is not None:
            opts.spatial_dims = None if dims_of.get(gname) is None else int(dims_of[gname])
        for idx, entry in enumerate(items):
            case = CaseReport(case_id=f"{gname}[{idx}]")
            reports.append(case)
            if isinstance(entry, (str, os.PathLike)):
                entry = {image_key: entry}
            if not isinstance(entry, Mapping):
                case.error("entry", f"entry is a {type(entry).__name__}, expected a dict with '{image_key}'")
                continue
            if image_key not in entry or entry[image_key] is None:
                case.error("entry", f"entry has no '{image_key}' key (keys: {sorted(map(str, entry))})")
                continue
            image = entry[image_key]
            label = entry.get(label_key)
            case.image, case.label = image, label
            if label is None and require_label:
                case.error("missing", f"missing partner: entry has no '{label_key}'")
            _verify_case(case, image, label, resolve, opts, seen_paths, seen_digests)
            if gname in empty_labels_expected:
                case.warnings = [w for w in case.warnings if w.check != "empty_label"]

    report = VerificationReport(reports, num_classes=num_classes, problems=problems)
    for c in report.warned:
        for f in c.warnings:
            logger.warning(f"{c.case_id} ({_describe(c.image)}): {f}")
    if raise_on_error:
        report.raise_if_failed()
    return report


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _verify_image(case, image, resolve, opts: _Options, seen_paths, seen_digests) -> _Loaded | None:
    """Load and check the image (one file, several files = channels, or an array); None if unusable."""
    parts = _as_list(image)
    loaded: list[_Loaded] = []
    for part in parts:
        part = resolve(part)
        if isinstance(part, Path):
            if not _check_path(case, part, "image", opts):
                continue
            if not part.is_file() and not part.is_dir():  # a folder: a DICOM series
                case.error("missing", f"image file '{part}' does not exist")
                continue
            key = str(part.resolve())
            same_path = opts.check_duplicates and key in seen_paths
            if same_path:
                case.error("duplicate", f"image file '{part}' is also used by {seen_paths[key]}")
            elif opts.check_duplicates:
                seen_paths[key] = case.case_id
            try:
                ld = _load_one(part, hash_content=opts.check_duplicates)
            except Exception as e:  # readers raise many types for corrupt data; all mean "unreadable"
                case.error("unreadable",
                           f"image file '{part}' cannot be read (truncated or corrupt?): {_first_line(e)}")
                continue
            if opts.check_duplicates and ld.digest is not None and not same_path:
                if ld.digest in seen_digests and seen_digests[ld.digest] != case.case_id:
                    case.error("duplicate", f"image file '{part}' has the same content as {seen_digests[ld.digest]}")
                else:
                    seen_digests.setdefault(ld.digest, case.case_id)
            loaded.append(ld)
        else:
            try:
                loaded.append(_from_memory(part, has_channel_first=True))
            except Exception as e:
                case.error("entry", f"image is neither a path nor an array: {_first_line(e)}")
    if len(loaded) != len(parts):
        return None
    shapes = {ld.spatial_shape for ld in loaded}
    if len(shapes) > 1:
        case.error("shape", f"image files have different spatial shapes {sorted(shapes)}")
        return None
    img = loaded[0]
    if opts.spatial_dims is not None and len(img.spatial_shape) != opts.spatial_dims:
        case.error("dims", f"image has {len(img.spatial_shape)} spatial dimension(s) (spatial shape "
                           f"{img.spatial_shape}, {img.channels} channel(s)), the network takes "
                           f"{opts.spatial_dims}D images")
        return None
    channels = sum(ld.channels for ld in loaded)
    if opts.convert_to is not None or opts.eight_bit:
        from medurwkv_net.data.transforms import image_to_channels

        for ld, part in zip(loaded, parts):
            try:
                image_to_channels(_channel_first(ld), opts.convert_to or ld.channels, eight_bit=opts.eight_bit,
                                  mode=ld.mode, source=str(resolve(part)) if isinstance(resolve(part), Path) else None)
            except ValueError as e:
                case.error("channels", str(e))
    if opts.allowed_channels is not None and channels not in opts.allowed_channels:
        expected = sorted(opts.allowed_channels)
        case.error("channels", f"image has {channels} channel(s), expected "
                               f"{expected[0] if len(expected) == 1 else 'one of ' + str(expected)} "
                               f"(spatial shape {img.spatial_shape})")
    for i, ld in enumerate(loaded):
        what = "image" if len(loaded) == 1 else f"image part {i}"
        _check_image_values(case, ld.array, what, channel_last=ld.array.ndim > len(ld.spatial_shape))
    return img


def _load_label_part(case, part, resolve, img, image_paths, opts: _Options) -> _Loaded | None:
    part = resolve(part)
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
            return _load_one(part, hash_content=False)
        except Exception as e:
            case.error("unreadable", f"label file '{part}' cannot be read (truncated or corrupt?): {_first_line(e)}")
            return None
    try:
        arr = np.asarray(part.detach().cpu() if hasattr(part, "detach") else part)
    except Exception as e:
        case.error("entry", f"label is neither a path nor an array: {_first_line(e)}")
        return None
    has_c = img is not None and arr.ndim == len(img.spatial_shape) + 1
    return _from_memory(arr, has_channel_first=has_c)


def _verify_case(case, image, label, resolve, opts: _Options, seen_paths, seen_digests) -> None:
    img = _verify_image(case, image, resolve, opts, seen_paths, seen_digests)
    if label is None:
        return
    image_paths = {_real_path(resolve(p)) for p in _as_list(image) if isinstance(resolve(p), Path)} - {None}
    parts = _as_list(label)
    if opts.label_mode == "index" and len(parts) != 1:
        case.error("entry", f"label_mode 'index' takes one label file, got {len(parts)}")
        return
    labs = [_load_label_part(case, p, resolve, img, image_paths, opts) for p in parts]
    if any(lab is None for lab in labs):
        return
    for lab, part in zip(labs, parts):
        what = "label" if len(parts) == 1 else f"label '{part}'"
        if img is not None and img.spatial_shape != lab.spatial_shape:
            case.error("shape", f"image spatial shape {img.spatial_shape} != {what} spatial shape {lab.spatial_shape}")
            return
        if img is not None and img.affine is not None and lab.affine is not None:
            _compare_affines(case, img.affine, lab.affine, opts.affine_atol, what)
    if opts.label_mode == "mask":
        fg_any = False
        nonzero_max = 0.0
        for lab, part in zip(labs, parts):
            what = "label" if len(parts) == 1 else f"label '{part}'"
            fg = _check_mask_values(case, lab, opts.label_threshold, what,
                                    str(resolve(part)) if isinstance(resolve(part), Path) else "")
            if fg is None:
                return
            fg_any = fg_any or bool(fg.any())
            colour = _channel_first(lab)
            colour = colour[:-1] if colour.shape[0] in (2, 4) else colour  # alpha is not data
            if colour.size:
                nonzero_max = max(nonzero_max, float(np.max(colour)))
        case.label_classes = [0, 1] if fg_any else [0]
        if not fg_any:
            if nonzero_max > 0:
                from medurwkv_net.data.transforms import mask_threshold

                threshold = (opts.label_threshold if opts.label_threshold is not None
                             else f"auto ({mask_threshold(np.array([nonzero_max])):g})")
                case.warn("empty_label", f"mask has non-zero values (max {nonzero_max:g}) but none above the "
                                         f"threshold {threshold}: empty after thresholding")
            else:
                case.warn("empty_label", "label is empty (background 0 only)")
        return
    lab = labs[0]
    if lab.channels > 1:
        same = all(np.array_equal(lab.array[..., 0], lab.array[..., c]) for c in range(1, lab.channels))
        if not same:
            case.error("channels", f"label has {lab.channels} different channels, expected one label map")
            return
        lab_arr = lab.array[..., 0]
    else:
        lab_arr = lab.array
    _check_label_values(case, lab_arr, opts.allowed, opts.allowed_desc)


def _compare_affines(case, a: np.ndarray, b: np.ndarray, atol: float, what: str) -> None:
    if a.shape != b.shape:
        case.error("affine", f"image affine {a.shape} and {what} affine {b.shape} differ in rank")
        return
    diff = float(np.abs(a - b).max())
    if diff > atol:
        case.error(
            "affine",
            f"image and {what} affines differ by up to {diff:.4g} (tolerance {atol}); "
            f"spacing image {_spacing(a)} vs label {_spacing(b)}, "
            f"origin image {a[:-1, -1].round(4).tolist()} vs label {b[:-1, -1].round(4).tolist()}",
        )


# ---------------------------------------------------------------------------------- ignite handler
_VERIFIED: set[str] = set()  # cases verified by verify_datalist_file in this process


def _case_key(entry: Any, image_key: str = "image", label_key: str = "label") -> str:
    if isinstance(entry, Mapping):
        return json.dumps([_describe(entry.get(image_key)), _describe(entry.get(label_key))])
    return json.dumps([_describe(entry), None])


def verify_datalist_file(
    datalist_file: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    enabled: bool = True,
    class_names: Sequence[str] | None = None,
    **settings: Any,
) -> str:
    """Verify every split of a MONAI (Decathlon-style) datalist file before any dataset reads a file.

    Bundles use it in the ``data`` of every dataset, e.g.
    ``"$monai.data.load_decathlon_datalist(@verified_datalist, True, 'training')"`` with
    ``"verified_datalist": "$medurwkv_net.reliability.verify_datalist_file(@datalist_file, @dataset_dir, ...)"``,
    so that a bad case is reported by name before ``CacheDataset`` loads anything.

    Args:
        datalist_file: the JSON datalist; every key holding a list of cases (``training``, ``validation``,
            ``test``, ...) is verified, with paths resolved as ``load_decathlon_datalist`` resolves them.
        dataset_dir: every file must lie inside this folder or the datalist's own folder.
        enabled: ``False`` skips the check (the config's ``verify_data``).
        class_names: names of the classes, for the warning about a class missing from the validation labels.
        settings: passed to :func:`verify_datalist` (``num_classes``, ``spatial_dims``, ``label_mode``, ...).

    Returns:
        ``datalist_file``, unchanged.

    Raises:
        DataVerificationError: a case failed (the message lists each one with its file and the reason).
    """
    if not enabled:
        return str(datalist_file)
    from monai.data import load_decathlon_datalist

    path = Path(datalist_file)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataVerificationError(f"datalist '{path}' cannot be read as JSON: {_first_line(e)}") from e
    if not isinstance(raw, Mapping):
        raise DataVerificationError(f"datalist '{path}' holds a {type(raw).__name__}, expected a JSON object")
    keys = [k for k, v in raw.items() if isinstance(v, list) and v and all(isinstance(c, Mapping) for c in v)]
    if not keys:
        raise DataVerificationError(f"datalist '{path}' has no list of cases (keys: {sorted(raw)})")
    lists = {k: load_decathlon_datalist(str(path), True, k) for k in keys}
    roots = None if dataset_dir is None else [dataset_dir, path.parent]
    settings = {**settings, **_declared_settings(raw, keys, settings.get("spatial_dims"))}
    report = verify_datalist(lists, dataset_dir=roots, **settings)
    if not report.ok:
        raise DataVerificationError(
            f"training refused: the datalist '{path}' failed verification (set verify_data to false to skip it)\n"
            + report.summary(),
            report=report,
        )
    logger.info(report.summary(max_cases=20))
    if settings.get("num_classes") is not None:
        for warning in missing_class_warnings(report, int(settings["num_classes"]), class_names):
            logger.warning(warning)
    for cases in lists.values():
        _VERIFIED.update(_case_key(c) for c in cases)
    return str(datalist_file)


def _declared_settings(raw: Mapping, keys: Sequence[str], default: Any) -> dict:
    """What a datalist says about its own lists, as :func:`verify_datalist` settings (``{}`` when nothing):
    ``"spatial_dims": {"training": 2, "test": 3}`` (written by preparations that slice volumes; lists it does
    not name keep ``default``) and ``"empty_labels_expected": ["training"]`` (lists holding background-only
    cases on purpose)."""
    out: dict[str, Any] = {}
    declared = raw.get("spatial_dims")
    if isinstance(declared, Mapping):
        fallback = None if default is None or isinstance(default, Mapping) else int(default)
        out["spatial_dims"] = {k: int(declared[k]) if k in declared else fallback for k in keys}
    expected = raw.get("empty_labels_expected")
    if isinstance(expected, list) and all(isinstance(k, str) for k in expected):
        out["empty_labels_expected"] = list(expected)
    return out


def missing_class_warnings(
    report: VerificationReport,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    splits: Sequence[str] = ("validation",),
    max_cases: int = 5,
) -> list[str]:
    """Warnings for classes without foreground in any case of a split (their Dice is undefined every epoch).

    Args:
        report: a report of :func:`verify_datalist` over a mapping of splits (case ids ``<split>[<i>]``).
        num_classes: number of classes, background (0) included.
        class_names: names of the classes, in value order.
        splits: the splits to check.
        max_cases: number of cases named per warning.
    """
    out = []
    for split in splits:
        cases = [c for c in report.cases if c.case_id.startswith(f"{split}[") and c.label_classes is not None]
        if not cases:
            continue
        for value in range(1, num_classes):
            if any(value in c.label_classes for c in cases):
                continue
            name = f" ('{class_names[value]}')" if class_names and value < len(class_names) else ""
            shown = ", ".join(f"{c.case_id} {_describe(c.label)}" for c in cases[:max_cases])
            more = f" and {len(cases) - max_cases} more" if len(cases) > max_cases else ""
            out.append(
                f"the {split} labels hold no class {value}{name} in any of their {len(cases)} case(s) ({shown}{more}): "
                f"its Dice is undefined (NaN) every epoch and the validation metric cannot rate it; add {split} "
                "cases that contain it"
            )
    return out


class VerifyDataHandler:
    """Runs :func:`verify_datalist` at ``Events.STARTED`` and refuses to train on bad data.

    Usable as a MONAI bundle ``train#handlers`` entry::

        {"_target_": "medurwkv_net.reliability.VerifyDataHandler", "datalist": "@train#dataset#data",
         "num_classes": 3, "enabled": "@verify_data"}

    Raises :class:`DataVerificationError` (message: the per-case summary) before the first iteration.
    Verification runs once per handler (a resumed ``run`` does not repeat it) unless ``every_run``.
    """

    def __init__(
        self,
        datalist: Any,
        num_classes: int | None = None,
        enabled: bool = True,
        image_key: str = "image",
        label_key: str = "label",
        every_run: bool = False,
        **kwargs: Any,
    ):
        self.datalist = datalist
        self.num_classes = num_classes
        self.enabled = bool(enabled)
        self.image_key = image_key
        self.label_key = label_key
        self.every_run = every_run
        self.kwargs = kwargs
        self.report: VerificationReport | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> VerificationReport | None:
        if not self.enabled or (self.report is not None and not self.every_run):
            return self.report
        data = self.datalist() if callable(self.datalist) else self.datalist
        if hasattr(data, "data") and not isinstance(data, (list, tuple, Mapping)):
            data = data.data  # a MONAI Dataset
        cases = [c for v in data.values() for c in v] if isinstance(data, Mapping) else list(data)
        if cases and all(_case_key(c, self.image_key, self.label_key) in _VERIFIED for c in cases):
            logger.info(f"{len(cases)} case(s) already verified before loading (verify_datalist_file)")
            self.report = VerificationReport([])
            return self.report
        report = verify_datalist(data, self.num_classes, image_key=self.image_key,
                                 label_key=self.label_key, **self.kwargs)
        self.report = report
        if not report.ok:
            raise DataVerificationError(
                "training refused: the dataset failed verification (switch off with enabled=False)\n"
                + report.summary(),
                report=report,
            )
        logger.info(report.summary(max_cases=20))
        return report


# --------------------------------------------------------------------------------------------- CLI
def _bundle_meta(parser, config_files: list[str], meta_file: str | None) -> dict:
    if meta_file is None:
        guess = Path(config_files[0]).parent / "metadata.json"
        meta_file = str(guess) if guess.is_file() else None
    if meta_file is None:
        return {}
    if not Path(meta_file).is_file():
        raise FileNotFoundError(f"meta_file '{meta_file}' does not exist")
    with open(meta_file) as f:
        return json.load(f)


def _from_meta(meta: Mapping) -> tuple[int | None, int | None, dict | None]:
    fmt = meta.get("network_data_format", {}) if isinstance(meta, Mapping) else {}
    outputs, inputs = fmt.get("outputs", {}), fmt.get("inputs", {})
    num_classes = image_channels = channel_def = None
    if outputs:
        out = next(iter(outputs.values()))
        channel_def = out.get("channel_def") or None
        num_classes = len(channel_def) if channel_def else out.get("num_channels")
    if inputs:
        image_channels = next(iter(inputs.values())).get("num_channels")
    return num_classes, image_channels, channel_def


def _find_target(node: Any, suffix: str, path: str = "") -> str | None:
    """The config id of the first entry whose ``_target_`` ends with ``suffix``."""
    if isinstance(node, Mapping):
        if str(node.get("_target_", "")).endswith(suffix):
            return path
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return None
    for k, v in items:
        found = _find_target(v, suffix, f"{path}#{k}" if path else str(k))
        if found is not None:
            return found
    return None


def _conversion_settings(parser) -> dict:
    """``image_channels``/``convert_channels``/``eight_bit`` of the config's ``EnsureChannelsd`` (the conversion
    the pipeline applies to images), so that verification accepts what the pipeline converts."""
    for root in ("train#deterministic_transforms", "train#preprocessing", "validate#preprocessing", "preprocessing"):
        if root not in parser:
            continue
        at = _find_target(parser.get(root), "EnsureChannelsd", root)
        if at is None:
            continue
        out: dict[str, Any] = {"convert_channels": True,
                               "image_channels": int(parser.get_parsed_content(f"{at}#channels"))}
        if f"{at}#eight_bit" in parser:
            out["eight_bit"] = bool(parser.get_parsed_content(f"{at}#eight_bit"))
        return out
    return {}


def _handler_settings(parser) -> dict:
    """Arguments of the first ``VerifyDataHandler`` in ``train#handlers`` (the bundle's own settings)."""
    try:
        handlers = parser.get("train#handlers")
    except Exception:
        return {}
    if not isinstance(handlers, list):
        return {}
    for i, h in enumerate(handlers):
        if isinstance(h, Mapping) and str(h.get("_target_", "")).endswith("VerifyDataHandler"):
            out = {}
            for k in h:
                if k.startswith("_") or k in ("datalist", "enabled", "every_run"):
                    continue
                out[k] = parser.get_parsed_content(f"train#handlers#{i}#{k}")
            return out
    return {}


def _datalist_splits(datalist_file: Any) -> dict[str, list]:
    """The splits (training, validation, test, then any other list of cases) of a datalist file, paths
    resolved as ``load_decathlon_datalist`` resolves them; ``{}`` when the file does not exist."""
    from monai.data import load_decathlon_datalist

    path = Path(str(datalist_file))
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataVerificationError(f"datalist '{path}' cannot be read as JSON: {_first_line(e)}") from None
    keys = [k for k, v in raw.items() if isinstance(v, list) and v and all(isinstance(c, Mapping) for c in v)]
    keys.sort(key=lambda k: (["training", "validation", "test"] + [k]).index(k))
    return {k: load_decathlon_datalist(str(path), True, k) for k in keys}


def verify_data_cli(
    config_file: str | Sequence[str],
    dataset_dir: str | None = None,
    meta_file: str | None = None,
    num_classes: int | None = None,
    image_channels: int | None = None,
    allowed_channels: Sequence[int] | None = None,
    label_mode: str | None = None,
    label_threshold: float | None = None,
    sections: str | Sequence[str] | None = None,
    report_file: str | None = None,
    max_cases: int = 100,
    **override: Any,
) -> None:
    """Check every image/label pair that a bundle config reads (``verify-data --config_file configs/train.json``).

    Reads the bundle config with ``monai.bundle.ConfigParser`` (``--key value`` pairs override config
    entries like ``monai.bundle run``), runs its ``prepare_data`` and verifies every split of its
    ``datalist_file`` (training, validation and test) together, so that a case in two splits is reported;
    configs without a datalist file (or with ``--sections``) are verified through ``<section>#dataset#data``.
    Prints a table (cases, errors and warnings per split), then every problem with its file. Settings, first found wins:
    the command line; the ``VerifyDataHandler`` entry of ``train#handlers``; the config's ``label_mode``,
    ``label_threshold``; ``metadata.json`` next to the config (channel_def, input num_channels). What the
    datalist file declares about its own lists wins over these: ``spatial_dims`` per list (e.g. 2D slices and
    3D volumes of one preparation) and ``empty_labels_expected``; files in the datalist's folder (written by
    the preparation) count as inside the dataset folder.
    Prints the per-case summary, optionally writes it as JSON, and exits with status 1 on any error.

    Args:
        config_file: the bundle config(s), e.g. ``configs/train.json`` (a list or comma-separated to merge).
        dataset_dir: overrides the config's ``dataset_dir``.
        meta_file: the bundle's ``metadata.json`` (default: beside the config).
        num_classes: classes of the labels (default: from the metadata's ``channel_def``).
        image_channels: channels the network takes (default: from the metadata).
        allowed_channels: image channel counts accepted as input (converted by the bundle).
        label_mode: how labels are read (the config's ``label_mode``).
        label_threshold: threshold of binary masks (the config's ``label_threshold``).
        sections: config sections whose ``dataset#data`` is checked instead of the datalist file's splits
            (default: the datalist file when the config has ``datalist_file``, else ``train,validate``).
        report_file: also write the per-case report as JSON here.
        max_cases: how many problem cases to print.
        **override: ``--key value`` pairs that override config entries.
    """
    from monai.bundle import ConfigParser

    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    files = [s.strip() for f in files for s in str(f).split(",") if s.strip()]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"config file '{f}' does not exist")
    parser = ConfigParser()
    parser.read_config(files if len(files) > 1 else files[0])
    meta = _bundle_meta(parser, files, meta_file)
    if meta:
        parser.read_meta(meta)
    if dataset_dir is not None:
        parser["dataset_dir"] = str(dataset_dir)
    for k, v in override.items():
        parser[k] = v
    if "prepare_data" in parser:  # the bundle's explicit, idempotent data preparation (its training runs it first)
        try:
            parser.get_parsed_content("prepare_data")
        except Exception as e:
            root = root_cause(e)
            raise DataVerificationError(f"preparing the data ('prepare_data' of {', '.join(files)}) failed: "
                                        f"{str(root).strip() or type(root).__name__}") from None
    if "verify_data" in parser:
        parser["verify_data"] = False  # the datasets' own check would stop at the first failure; report all here

    settings: dict[str, Any] = {}
    m_classes, m_channels, channel_def = _from_meta(meta)
    if m_classes is not None:
        settings["num_classes"] = m_classes
    if m_channels is not None:
        settings["image_channels"] = m_channels
    if channel_def:
        settings["channel_def"] = channel_def
    for key in ("label_mode", "label_threshold"):
        if key in parser:
            settings[key] = parser.get_parsed_content(key)
    if "spatial_size" in parser:
        settings["spatial_dims"] = len(parser.get_parsed_content("spatial_size"))
    if "dataset_dir" in parser:
        settings["dataset_dir"] = parser.get_parsed_content("dataset_dir")
    settings.update(_conversion_settings(parser))
    settings.update(_handler_settings(parser))
    cli = {"num_classes": num_classes, "image_channels": image_channels, "allowed_channels": allowed_channels,
           "label_mode": label_mode, "label_threshold": label_threshold}
    settings.update({k: v for k, v in cli.items() if v is not None})
    if settings.get("label_mode") == "mask":
        settings.pop("channel_def", None)

    lists: dict[str, Any] = {}
    if sections is None and "datalist_file" in parser:
        datalist_file = parser.get_parsed_content("datalist_file")
        lists = _datalist_splits(datalist_file)
        if lists:
            raw = json.loads(Path(str(datalist_file)).read_text())
            settings.update(_declared_settings(raw, list(lists), settings.get("spatial_dims")))
            if settings.get("dataset_dir") is not None:  # as verify_datalist_file: files the preparation wrote
                settings["dataset_dir"] = [settings["dataset_dir"], str(Path(str(datalist_file)).parent)]
    if not lists:
        if sections is None:
            sections = ("train", "validate")
        if isinstance(sections, str):
            sections = [s.strip() for s in sections.split(",") if s.strip()]
        for sec in sections:
            key = f"{sec}#dataset#data"
            if key in parser:
                try:
                    data = parser.get_parsed_content(key)
                except Exception as e:
                    root = root_cause(e)
                    raise DataVerificationError(f"cannot resolve '{key}' from {', '.join(files)}: "
                                                f"{str(root).strip() or type(root).__name__}") from None
                lists[sec] = data
        if not lists:
            raise KeyError(f"none of {[f'{s}#dataset#data' for s in sections]} is defined in {files}")
    report = verify_datalist(lists, **settings)
    print(report.table())
    print(report.summary(max_cases=max_cases))
    if report_file:
        atomic_write_json(report_file, report.to_dict(), indent=2)
    if not report.ok:
        sys.stdout.flush()
        raise SystemExit(1)
