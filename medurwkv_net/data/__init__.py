"""Readers of the public dataset releases, datalist building, the transforms that turn the releases'
masks into labels (:class:`LoadMaskd`) and images into the network's channels, and the photo
augmentations MONAI lacks (:mod:`medurwkv_net.data.augment`: colour, H&E stain, JPEG, speckle), and the MR
intensity normalisation against a smooth bias field (:class:`DivideByLocalMeand` in
:mod:`medurwkv_net.data.intensity`).

Command: ``medurwkv-net prepare-data DATASET DATASET_DIR [--output datalist.json] [--seed 0]``
(:mod:`medurwkv_net.cli.prepare_data`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medurwkv_net.core import errors as _errors

from .augment import RandColorJitterd, RandHEStainJitterd, RandJPEGd, RandSpeckleNoised
from .intensity import DivideByLocalMean, DivideByLocalMeand
from .releases import (
    RELEASES,
    Release,
    ReleaseSpec,
    get_release,
    read_busi,
    read_glas,
    read_isic2017,
    read_isic2018,
    read_kvasir,
    read_release,
    read_tdd,
)
from .splits import (
    DEFAULT_FRACTIONS,
    build_datalist,
    check_cases,
    check_pairs,
    ensure_datalist,
    ensure_with_report,
    seeded_split,
    write_datalist,
)
from .transforms import EnsureChannels, EnsureChannelsd, LoadMask, LoadMaskd, binarize_mask

if _errors.running_monai_bundle():  # `python -m monai.bundle run ...`: a bad release is one message
    _errors.install_error_hook()

__all__ = [
    "DEFAULT_FRACTIONS",
    "DivideByLocalMean",
    "DivideByLocalMeand",
    "RELEASES",
    "Release",
    "ReleaseSpec",
    "build_datalist",
    "check_cases",
    "check_pairs",
    "ensure_datalist",
    "get_release",
    "read_busi",
    "read_glas",
    "read_isic2017",
    "read_isic2018",
    "read_kvasir",
    "read_release",
    "read_tdd",
    "seeded_split",
    "write_datalist",
    "EnsureChannels",
    "EnsureChannelsd",
    "LoadMask",
    "LoadMaskd",
    "binarize_mask",
    "describe_datalist",
    "prepare_datalist",
    "split_images",
    "RandColorJitterd",
    "RandHEStainJitterd",
    "RandJPEGd",
    "RandSpeckleNoised",
]


def reader_kwargs(dataset: str, image_dir=None, mask_dir=None, include_normal=None) -> dict:
    """The reader options that were given, checked against the dataset they apply to."""
    name = get_release(dataset).name
    kwargs = {k: v for k, v in (("image_dir", image_dir), ("mask_dir", mask_dir)) if v is not None}
    if kwargs and name != "tdd":
        raise ValueError(f"image_dir/mask_dir apply to the images/ + masks/ layouts (tdd, nkut), not to '{dataset}'")
    if include_normal is not None:
        if name != "busi":
            raise ValueError(f"include_normal applies to busi only, not to '{dataset}'")
        if not isinstance(include_normal, bool):
            raise ValueError(f"include_normal must be true or false, got {include_normal!r}")
        kwargs["include_normal"] = include_normal
    return kwargs


def prepare_datalist(
    dataset: str,
    dataset_dir: str,
    output: str = "datalist.json",
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    image_dir: str | None = None,
    mask_dir: str | None = None,
    include_normal: bool | None = None,
) -> str:
    """Read the public release of ``dataset`` (one of isic2017, isic2018, glas, tdd, busi, kvasir, nkut)
    unpacked under ``dataset_dir`` and write its datalist (official or seeded train/validation/test split)
    to ``output`` when missing or out of date; return the path. What the bundles' ``datalist_file``
    calls, so that training prepares the data on first use. ``image_dir``/``mask_dir`` name other
    sub-folders for the images/ + masks/ layout (tdd) and the images/ + labels/ layout (nkut, whose
    preparation, :func:`medurwkv_net.data.nkut.prepare`, also writes slices beside ``output``);
    ``include_normal`` adds BUSI's normal cases. Mask and image sizes are checked before anything is written."""
    if is_nkut(dataset):
        from . import nkut

        check_nkut_options(include_normal)
        return nkut.prepare(
            dataset_dir, output, seed=seed, fractions=fractions, image_dir=image_dir, label_dir=mask_dir
        )
    try:
        kwargs = reader_kwargs(dataset, image_dir, mask_dir, include_normal)
        datalist, report = ensure_with_report(dataset, dataset_dir, output, seed=seed, fractions=fractions, **kwargs)
    except (ValueError, OSError, KeyError) as e:
        raise as_dataset_error(e) from e
    logging.getLogger(__name__).info(describe_datalist(datalist, report, Path(output).resolve()))
    return str(Path(output).resolve())


def is_nkut(dataset) -> bool:
    """True when ``dataset`` names NKUT (any case, with or without ``-``/``_``)."""
    return str(dataset).lower().replace("-", "").replace("_", "") == "nkut"


def check_nkut_options(include_normal) -> None:
    """Refuse the options that do not apply to NKUT."""
    if include_normal is not None:
        raise _errors.DatasetError("include_normal applies to busi only, not to 'nkut'")


def as_dataset_error(e: BaseException) -> BaseException:
    """``e`` as a :class:`~medurwkv_net.core.errors.DatasetError` (one message for the user), unless it is one."""
    if isinstance(e, _errors.DATA_ERRORS):
        return e
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return _errors.DatasetError(text)


def describe_datalist(datalist: dict, report: dict | None, path) -> str:
    """What a prepared datalist holds (split sizes, empty masks, notes), as printed by ``prepare-data``."""
    counts = ", ".join(f"{k}: {len(datalist[k])}" for k in ("training", "validation", "test"))
    text = (
        f"{datalist['name']} at '{datalist['dataset_dir']}' ({datalist['split']['method']} split, seed "
        f"{datalist['split']['seed']}): {counts} -> {path}"
    )
    if report is not None:
        empty = [c for k in ("training", "validation", "test") for c in report[k]["empty_masks"]]
        per = ", ".join(f"{k}: {len(report[k]['empty_masks'])}" for k in ("training", "validation", "test"))
        text += f"\nevery file decoded; cases with an empty mask (only background): {len(empty)} ({per})" + (
            f", e.g. {', '.join(repr(c) for c in empty[:5])}" if empty else ""
        )
    for note in datalist.get("notes", []):
        text += f"\nnote: {note}"
    return text


def split_images(
    dataset: str, dataset_dir: str, output: str = "datalist.json", seed: int = 0, split: str = "test", **kwargs
) -> list[dict]:
    """``[{"image": path}, ...]`` of one split (the test split is the default input of the bundles'
    inference.json when no ``input_dir`` is given)."""
    path = prepare_datalist(dataset, dataset_dir, output, seed=seed, **kwargs)
    return [{"image": c["image"]} for c in json.loads(Path(path).read_text())[split]]
