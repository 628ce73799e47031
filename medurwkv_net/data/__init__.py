"""Readers of the public dataset releases, datalist building, the transforms that turn the releases'
masks into labels (:class:`LoadMaskd`) and images into the network's channels, and the photo
augmentations MONAI lacks (:mod:`medurwkv_net.data.augment`: colour, H&E stain, JPEG, speckle).

CLI: ``python -m medurwkv_net prepare-data DATASET DATASET_DIR [--output datalist.json] [--seed 0]``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medurwkv_net.reliability import errors as _errors

from .augment import RandColorJitterd, RandHEStainJitterd, RandJPEGd, RandSpeckleNoised
from .releases import (
    DEFAULT_FRACTIONS,
    RELEASES,
    Release,
    ReleaseSpec,
    _ensure,
    build_datalist,
    check_cases,
    check_pairs,
    ensure_datalist,
    get_release,
    read_busi,
    read_glas,
    read_isic2017,
    read_isic2018,
    read_kvasir,
    read_release,
    read_tdd,
    seeded_split,
    write_datalist,
)
from .transforms import EnsureChannels, EnsureChannelsd, LoadMask, LoadMaskd, binarize_mask

if _errors.running_monai_bundle():  # `python -m monai.bundle run ...`: a bad release is one message
    _errors.install_error_hook()

__all__ = [
    "DEFAULT_FRACTIONS", "RELEASES", "Release", "ReleaseSpec", "build_datalist", "check_cases", "check_pairs",
    "ensure_datalist", "get_release", "read_busi", "read_glas", "read_isic2017", "read_isic2018",
    "read_kvasir", "read_release", "read_tdd", "seeded_split", "write_datalist",
    "EnsureChannels", "EnsureChannelsd", "LoadMask", "LoadMaskd", "binarize_mask", "prepare_data_cli",
    "prepare_datalist", "split_images", "RandColorJitterd", "RandHEStainJitterd", "RandJPEGd", "RandSpeckleNoised",
]


def _reader_kwargs(dataset: str, image_dir=None, mask_dir=None, include_normal=None) -> dict:
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


def prepare_datalist(dataset: str, dataset_dir: str, output: str = "datalist.json", seed: int = 0,
                     fractions=DEFAULT_FRACTIONS, image_dir: str | None = None,
                     mask_dir: str | None = None, include_normal: bool | None = None) -> str:
    """Read the public release of ``dataset`` (one of isic2017, isic2018, glas, tdd, busi, kvasir, nkut)
    unpacked under ``dataset_dir`` and write its datalist (official or seeded train/validation/test split)
    to ``output`` when missing or out of date; return the path. What the bundles' ``datalist_file``
    calls, so that training prepares the data on first use. ``image_dir``/``mask_dir`` name other
    sub-folders for the images/ + masks/ layout (tdd) and the images/ + labels/ layout (nkut, whose
    preparation, :func:`medurwkv_net.data.nkut.prepare`, also writes slices beside ``output``);
    ``include_normal`` adds BUSI's normal cases. Mask and image sizes are checked before anything is written."""
    if _is_nkut(dataset):
        from . import nkut

        _nkut_options(include_normal)
        return nkut.prepare(dataset_dir, output, seed=seed, fractions=fractions, image_dir=image_dir,
                            label_dir=mask_dir)
    try:
        kwargs = _reader_kwargs(dataset, image_dir, mask_dir, include_normal)
        datalist, report = _ensure(dataset, dataset_dir, output, seed=seed, fractions=fractions, **kwargs)
    except (ValueError, OSError, KeyError) as e:
        raise _as_dataset_error(e) from e
    logging.getLogger(__name__).info(_describe(datalist, report, Path(output).resolve()))
    return str(Path(output).resolve())


def _is_nkut(dataset) -> bool:
    return str(dataset).lower().replace("-", "").replace("_", "") == "nkut"


def _nkut_options(include_normal) -> None:
    if include_normal is not None:
        raise _errors.DatasetError("include_normal applies to busi only, not to 'nkut'")


def _as_dataset_error(e: BaseException) -> BaseException:
    if isinstance(e, _errors.DATA_ERRORS):
        return e
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return _errors.DatasetError(text)


def _describe(datalist: dict, report: dict | None, path) -> str:
    counts = ", ".join(f"{k}: {len(datalist[k])}" for k in ("training", "validation", "test"))
    text = (f"{datalist['name']} at '{datalist['dataset_dir']}' ({datalist['split']['method']} split, seed "
            f"{datalist['split']['seed']}): {counts} -> {path}")
    if report is not None:
        empty = [c for k in ("training", "validation", "test") for c in report[k]["empty_masks"]]
        per = ", ".join(f"{k}: {len(report[k]['empty_masks'])}" for k in ("training", "validation", "test"))
        text += (f"\nevery file decoded; cases with an empty mask (only background): {len(empty)} ({per})"
                 + (f", e.g. {', '.join(repr(c) for c in empty[:5])}" if empty else ""))
    for note in datalist.get("notes", []):
        text += f"\nnote: {note}"
    return text


def split_images(dataset: str, dataset_dir: str, output: str = "datalist.json", seed: int = 0, split: str = "test",
                 **kwargs) -> list[dict]:
    """``[{"image": path}, ...]`` of one split (the test split is the default input of the bundles'
    inference.json when no ``input_dir`` is given)."""
    path = prepare_datalist(dataset, dataset_dir, output, seed=seed, **kwargs)
    return [{"image": c["image"]} for c in json.loads(Path(path).read_text())[split]]


def prepare_data_cli(dataset: str, dataset_dir: str, output: str = "datalist.json", seed: int = 0,
                     fractions=DEFAULT_FRACTIONS, image_dir: str | None = None,
                     mask_dir: str | None = None, include_normal: bool | None = None) -> str:
    """Write the datalist of a public dataset unpacked under DATASET_DIR, printing the split sizes.

    Every image and mask is decoded (a truncated or corrupt file is named), mask sizes are compared with
    their images, and cases with empty masks are counted. nkut (CBCT volumes): every volume and label map is
    read and checked against its image's grid, the 4-class label maps and the axial slices of the training
    and validation cases are written beside OUTPUT (see ``medurwkv_net.data.nkut``).

    The split is the official one where the release has it, else seeded train/validation/test fractions.

    Args:
        dataset: one of isic2017, isic2018, glas, tdd, busi, kvasir, nkut.
        dataset_dir: the folder the archive(s) were unpacked into.
        output: the datalist to write (nkut: the axial slices and label volumes are written in its folder).
        seed: seed of the split, for releases without an official one.
        fractions: training, validation and test fractions of a seeded split.
        image_dir: another image sub-folder, for the images/ + masks/ layout (tdd) and nkut's images/.
        mask_dir: another mask sub-folder, likewise (nkut: the label folder, instead of labels/).
        include_normal: busi only: also the normal cases (default: benign + malignant).

    Returns:
        The path written.
    """
    if _is_nkut(dataset):
        from . import nkut

        _nkut_options(include_normal)
        return nkut.prepare_cli(dataset_dir, output, seed=seed, fractions=fractions, image_dir=image_dir,
                                label_dir=mask_dir)
    try:
        kwargs = _reader_kwargs(dataset, image_dir, mask_dir, include_normal)
        datalist, report = _ensure(dataset, dataset_dir, output, seed=seed, fractions=fractions, always_check=True,
                                   **kwargs)
    except (ValueError, OSError, KeyError) as e:
        raise _as_dataset_error(e) from e
    path = str(Path(output).resolve())
    print(_describe(datalist, report, path))
    return path
