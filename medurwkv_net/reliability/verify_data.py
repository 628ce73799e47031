"""Dataset verification: open every image/label pair and report, per case, everything that would make
training fail mid-epoch or silently learn from garbage.

Checks (``Finding.check`` codes): ``entry`` (malformed datalist entry), ``missing`` (file or partner
missing), ``unreadable`` (truncated / corrupt PNG, JPEG, BMP, NIfTI, ...), ``shape`` (image vs label
spatial shape), ``affine`` (image vs label spacing/orientation beyond a tolerance), ``channels``
(image channel count), ``label_values`` (values outside ``range(num_classes)`` or not integers),
``nonfinite`` (NaN/Inf intensities), ``duplicate`` (same file or identical content twice), ``dims``,
``outside``, ``symlink``. Warnings: ``empty_label`` (only background), ``constant_image``.

The parts: :mod:`.verify_report` (the report types), :mod:`medurwkv_net.data.readers` (decoding, shared with
prepare-data), :mod:`.verify_cases` (the checks of one case, with the pair check of
:mod:`medurwkv_net.data.pairs`), this module (a whole datalist, a datalist file), :mod:`.verify_handler`
(the ignite handler). Reading a bundle config's settings is :mod:`medurwkv_net.bundle.verify_config`; the
command is ``medurwkv-net verify-data`` (:mod:`medurwkv_net.cli.verify_data`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from medurwkv_net.core.errors import DataVerificationError
from medurwkv_net.data.readers import read_array

from .verify_cases import CheckOptions, dataset_roots, first_line, verify_case
from .verify_report import CaseReport, Finding, VerificationReport, describe

__all__ = [
    "CaseReport",
    "Finding",
    "VerificationReport",
    "declared_settings",
    "missing_class_warnings",
    "read_array",
    "verify_datalist",
    "verify_datalist_file",
]

logger = logging.getLogger(__name__)


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
    opts = CheckOptions(
        allowed,
        allowed_desc,
        label_mode,
        label_threshold,
        chans,
        float(affine_atol),
        bool(check_duplicates),
        None if spatial_dims is None or isinstance(spatial_dims, Mapping) else int(spatial_dims),
        dataset_roots(dataset_dir),
        convert_to,
        bool(eight_bit),
    )

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
    problems = [
        f"datalist '{name}' is empty: no case to train/validate on (wrong dataset_dir?)"
        for name, items in groups
        if len(items) == 0
    ]

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
            verify_case(case, image, label, resolve, opts, seen_paths, seen_digests)
            if gname in empty_labels_expected:
                case.warnings = [w for w in case.warnings if w.check != "empty_label"]

    report = VerificationReport(reports, num_classes=num_classes, problems=problems)
    for c in report.warned:
        for f in c.warnings:
            logger.warning(f"{c.case_id} ({describe(c.image)}): {f}")
    if raise_on_error:
        report.raise_if_failed()
    return report


_VERIFIED: set[str] = set()  # cases verified by verify_datalist_file in this process


def case_key(entry: Any, image_key: str = "image", label_key: str = "label") -> str:
    """The identity of a datalist entry (its image and label), for :func:`already_verified`."""
    if isinstance(entry, Mapping):
        return json.dumps([describe(entry.get(image_key)), describe(entry.get(label_key))])
    return json.dumps([describe(entry), None])


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
        raise DataVerificationError(f"datalist '{path}' cannot be read as JSON: {first_line(e)}") from e
    if not isinstance(raw, Mapping):
        raise DataVerificationError(f"datalist '{path}' holds a {type(raw).__name__}, expected a JSON object")
    keys = [k for k, v in raw.items() if isinstance(v, list) and v and all(isinstance(c, Mapping) for c in v)]
    if not keys:
        raise DataVerificationError(f"datalist '{path}' has no list of cases (keys: {sorted(raw)})")
    lists = {k: load_decathlon_datalist(str(path), True, k) for k in keys}
    roots = None if dataset_dir is None else [dataset_dir, path.parent]
    settings = {**settings, **declared_settings(raw, keys, settings.get("spatial_dims"))}
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
        _VERIFIED.update(case_key(c) for c in cases)
    return str(datalist_file)


def declared_settings(raw: Mapping, keys: Sequence[str], default: Any) -> dict:
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
            if any(value in (c.label_classes or ()) for c in cases):
                continue
            name = f" ('{class_names[value]}')" if class_names and value < len(class_names) else ""
            shown = ", ".join(f"{c.case_id} {describe(c.label)}" for c in cases[:max_cases])
            more = f" and {len(cases) - max_cases} more" if len(cases) > max_cases else ""
            out.append(
                f"the {split} labels hold no class {value}{name} in any of their {len(cases)} case(s) ({shown}{more}): "
                f"its Dice is undefined (NaN) every epoch and the validation metric cannot rate it; add {split} "
                "cases that contain it"
            )
    return out


def already_verified(cases: Sequence[Any], image_key: str = "image", label_key: str = "label") -> bool:
    """True when every case was verified by :func:`verify_datalist_file` in this process (and there is one)."""
    return bool(cases) and all(case_key(c, image_key, label_key) in _VERIFIED for c in cases)
