"""Preparing an NKUT release for the bundle: a seeded split by case, axial slices for the 2D network, whole
volumes for evaluation, inference and the 3D variant, and the datalist.

Files written in the folder of the datalist (``prepared/`` in the bundle)::

    label_volumes/CASE.nii.gz          the class-index map of every case on its image's grid (uint8, the
                                       image's affine): what evaluation compares the predictions with
    slices/images/CASE_zNNNN.nii.gz    axial slices of the training and validation cases (float32, normalised)
    slices/labels/CASE_zNNNN.nii.gz    their class indices (uint8)
    datalist.json

Datalist keys: ``training`` and ``validation`` hold slices (``{"image", "label", "case", "slice"}``); ``test``,
``training_volumes`` and ``validation_volumes`` hold whole volumes (``{"image": the release's file or DICOM
folder, "label": label_volumes/CASE.nii.gz, "case"}``); ``spatial_dims`` says which splits are 2D and which
3D (verify-data checks each split with its own) and ``empty_labels_expected`` that the slice lists hold
background-only slices on purpose (no warning for them); ``split`` records the seed and fractions, ``preparation`` the
settings and the size and time of every source file, so that a finished, matching preparation is reused.

Slicing: each volume is brought to RAS orientation (MONAI ``Orientation``), so that its third axis runs from
inferior to superior and its slices are axial whatever the file's own orientation; evaluation and inference
apply the same ``Orientationd`` to the volume and invert it on the prediction. Intensities: CBCT grey values
are not calibrated Hounsfield units and their range differs between scanners and volumes, so each volume is
mapped to [0, 1] between its own ``percentiles`` (default 0.5 and 99.5, clipped) by MONAI's
``ScaleIntensityRangePercentiles``, the transform evaluation and inference apply to whole volumes. Slices
whose image is constant and unlabelled (outside the field of view) are left out; of the other slices without
any labelled voxel a seeded ``empty_slice_fraction`` is kept (the network must learn to leave them empty).
"""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path
from typing import cast

import numpy as np

from medurwkv_net.core.atomic import atomic_write_bytes, atomic_write_json
from medurwkv_net.core.errors import DatasetError

from ..splits import DEFAULT_FRACTIONS, _check_fractions, seeded_split
from .labels import CLASS_NAMES, load_volume, read_label_map
from .release import fingerprint, read_release, strip_volume_extension, volume_stem

__all__ = ["DEFAULT_PERCENTILES", "EMPTY_SLICE_FRACTION", "list_volumes", "output_name", "prepare", "summary"]

DEFAULT_PERCENTILES = (0.5, 99.5)
EMPTY_SLICE_FRACTION = 0.25
#: the axis of the RAS-oriented volume along which the axial slices are taken (inferior -> superior)
SLICE_AXIS = 2
_VERSION = 1  # bump when the preparation changes: older folders are then rewritten
_VOLUME_KEYS = ("test", "training_volumes", "validation_volumes")
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _settings(seed, fractions, class_names, percentiles, empty_slice_fraction) -> dict:
    try:
        fr = _check_fractions(fractions)
    except ValueError as e:
        raise DatasetError(f"nkut: {e}") from None
    lo, hi = (float(p) for p in percentiles)
    if not 0 <= lo < hi <= 100:
        raise DatasetError(f"nkut: percentiles must be two numbers 0 <= lower < upper <= 100, got {list(percentiles)}")
    if not 0 <= float(empty_slice_fraction) <= 1:
        raise DatasetError(f"nkut: empty_slice_fraction must lie in [0, 1], got {empty_slice_fraction}")
    return {
        "seed": int(seed),
        "fractions": list(fr),
        "class_names": list(class_names),
        "percentiles": [lo, hi],
        "empty_slice_fraction": float(empty_slice_fraction),
        "slice_axis": SLICE_AXIS,
        "orientation": "RAS",
        "version": _VERSION,
    }


def _is_complete(path: Path, preparation: dict) -> bool:
    try:
        datalist = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(datalist, dict) or datalist.get("preparation") != preparation:
        return False
    return all((path.parent / p).exists() for p in _listed(datalist))


def _listed(datalist: dict) -> list[str]:
    keys = ("training", "validation") + _VOLUME_KEYS
    return [
        c[k]
        for key in keys
        for c in datalist.get(key, [])
        if isinstance(c, dict)
        for k in ("image", "label")
        if isinstance(c.get(k), str)
    ]


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    atomic_write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def _slices(case: str, image, label: np.ndarray, root: Path, settings: dict) -> list[dict]:
    """Write the axial slices of one case (RAS-oriented, intensity-normalised); return their entries."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, ScaleIntensityRangePercentiles

    orient = Orientation(axcodes="RAS", labels=_RAS_LABELS)
    img = cast(MetaTensor, orient(image))  # Orientation keeps the MetaTensor (its annotation says Tensor)
    lab = orient(MetaTensor(torch.as_tensor(label[None]), affine=image.affine))
    lo, hi = settings["percentiles"]
    img = cast(MetaTensor, ScaleIntensityRangePercentiles(lo, hi, 0.0, 1.0, clip=True)(img.float()))
    affine = np.asarray(img.affine, dtype=np.float64)
    image_arr, label_arr = np.asarray(img[0], dtype=np.float32), np.asarray(lab[0]).astype(np.uint8)
    rng = random.Random(f"{settings['seed']}:{case}")
    entries = []
    for z in range(image_arr.shape[SLICE_AXIS]):
        im, lb = image_arr[:, :, z], label_arr[:, :, z]
        labelled = bool(lb.any())
        keep = rng.random() < settings["empty_slice_fraction"]  # drawn for every slice: stable choices
        if not labelled and (im.min() == im.max() or not keep):
            continue
        at = affine.copy()
        at[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, float(z)]) + affine[:3, 3]
        name = f"{case}_z{z:04d}.nii.gz"
        _save_nifti(root / "slices" / "images" / name, im, at)
        _save_nifti(root / "slices" / "labels" / name, lb, at)
        entries.append({"image": f"slices/images/{name}", "label": f"slices/labels/{name}", "case": case, "slice": z})
    return entries


def _remove_stale(path: Path, keep: set[str]) -> None:
    """Delete the prepared files an earlier datalist at ``path`` listed and the new one does not."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or old.get("dataset") != "nkut":
        return
    for rel in set(_listed(old)) - keep:
        p = (path.parent / rel).resolve()
        if not Path(rel).is_absolute() and path.parent.resolve() in p.parents and p.is_file():
            p.unlink()


def prepare(
    dataset_dir,
    datalist_file,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    class_names=None,
    image_dir: str | None = None,
    label_dir: str | None = None,
    percentiles=DEFAULT_PERCENTILES,
    empty_slice_fraction: float = EMPTY_SLICE_FRACTION,
) -> str:
    """Prepare the NKUT release under ``dataset_dir`` next to ``datalist_file`` unless a matching preparation
    is there; return the datalist's path (what the bundle's ``prepare_data`` calls).

    Args:
        dataset_dir: the folder the release was unpacked into.
        datalist_file: the datalist to write; the slices and label volumes go into its folder.
        seed: seed of the split by case (and of the choice of unlabelled slices).
        fractions: training, validation and test fractions of the cases.
        class_names: the bundle's classes; the tooth/bone layout gives the 4 of :data:`CLASS_NAMES`, a single
            label map per case may hold any number (default 4).
        image_dir: the image folder's name if it is neither ``images/`` nor ``image/``.
        label_dir: the label folder's name if it is neither ``labels/`` nor ``label/``.
        percentiles: lower and upper intensity percentiles of each volume, mapped to 0 and 1.
        empty_slice_fraction: share of the unlabelled slices of a training or validation case that is kept.

    Raises:
        DatasetError: naming the file or folder at fault and what to do.
    """
    release = read_release(dataset_dir, image_dir, label_dir)
    names = list(class_names) if class_names is not None else list(CLASS_NAMES)
    if release.layout == "maps" and len(names) != len(CLASS_NAMES):
        raise DatasetError(
            f"nkut: the tooth/ and bone/ label maps of '{release.label_dir}' give the "
            f"{len(CLASS_NAMES)} classes {list(CLASS_NAMES)}; the bundle is configured for "
            f'{len(names)} {names}: pass --class_names "{list(CLASS_NAMES)}" --out_channels '
            f"{len(CLASS_NAMES)} (the defaults)"
        )
    settings = _settings(seed, fractions, names, percentiles, empty_slice_fraction)
    path = Path(datalist_file).expanduser().absolute()
    preparation = {
        **settings,
        "layout": release.layout,
        "cases": [
            {"case": c.case, "image": fingerprint(c.image), "labels": {r: fingerprint(p) for r, p in c.labels.items()}}
            for c in release.cases
        ],
    }
    if _is_complete(path, preparation):
        return str(path)
    split = seeded_split(
        [{"case": c.case, "item": c} for c in release.cases], settings["fractions"], seed, stratify=None
    )
    for key in ("training", "validation", "test"):
        if not split[key]:
            raise DatasetError(
                f"nkut: the {len(release.cases)} case(s) of '{release.image_dir}' leave the {key} "
                f"split empty (fractions {settings['fractions']}); training, validation and test "
                "need a case each: at least 3 cases"
            )
    root = path.parent
    datalist: dict = {
        "name": "NKUT",
        "dataset": "nkut",
        "dataset_dir": str(release.root),
        "layout": release.layout,
        "labels": {str(i): n for i, n in enumerate(names)},
        "split": {"method": "seeded", "unit": "case", "seed": int(seed), "fractions": settings["fractions"]},
        "spatial_dims": {"training": 2, "validation": 2, **{k: 3 for k in _VOLUME_KEYS}},
        "empty_labels_expected": ["training", "validation"],
        "notes": list(release.notes),
    }
    lists: dict[str, list] = {k: [] for k in ("training", "validation") + _VOLUME_KEYS}
    for key in ("training", "validation", "test"):
        for entry in split[key]:
            case = entry["item"]
            image = load_volume(case.image, "image")
            label, notes = read_label_map(case, image, len(names))
            datalist["notes"] += notes
            label_rel = f"label_volumes/{case.case}.nii.gz"
            _save_nifti(root / label_rel, label, np.asarray(image.affine))
            volume = {"image": str(case.image), "label": label_rel, "case": case.case}
            lists["test" if key == "test" else f"{key}_volumes"].append(volume)
            if key != "test":
                lists[key] += _slices(case.case, image, label, root, settings)
    for key in ("training", "validation"):
        if not lists[key]:
            raise DatasetError(
                f"nkut: the {key} cases ({', '.join(c['case'] for c in lists[key + '_volumes'])}) "
                "gave no slice: their label maps are empty and empty_slice_fraction is "
                f"{settings['empty_slice_fraction']}; check the label maps"
            )
    datalist.update({"numTraining": len(lists["training"]), **lists, "preparation": preparation})
    _remove_stale(path, set(_listed(datalist)))
    atomic_write_json(path, datalist, indent=1)
    return str(path)


def summary(path) -> str:
    """What a prepared datalist holds, for the command line: cases and slices per split, then its notes."""
    dl = json.loads(Path(path).read_text())
    parts = [f"{k}: {len(dl[k + '_volumes'])} case(s), {len(dl[k])} slices" for k in ("training", "validation")]
    parts.append(f"test: {len(dl['test'])} volume(s)")
    text = (
        f"{dl['name']} at '{dl['dataset_dir']}' ({dl['layout']} layout; seeded split by case, seed "
        f"{dl['split']['seed']}): {', '.join(parts)} -> {path}\nclasses: {dl['labels']}"
    )
    return text + "".join(f"\nnote: {n}" for n in dl["notes"])


def list_volumes(folder: str, missing_ok: bool = False) -> list[dict]:
    """``[{"image": path}, ...]`` for the volumes directly in ``folder`` (files of the formats the bundle reads,
    and DICOM series folders), sorted: the input of the bundle's inference.

    Args:
        folder: the bundle's ``input_dir``.
        missing_ok: return ``[]`` for a folder that does not exist (a workflow is then built without data);
            the bundle's ``run`` calls this again without it, which refuses a missing or empty folder.

    Raises:
        FileNotFoundError: naming the folder and what it should hold.
    """
    if not os.path.isdir(folder):
        if missing_ok:
            return []
        raise FileNotFoundError(f"input_dir '{folder}' is not a folder: pass --input_dir <folder of CBCT volumes>")
    found = [p for p in sorted(Path(folder).iterdir()) if volume_stem(p) is not None]
    if not found:
        raise FileNotFoundError(
            f"input_dir '{folder}' holds no CBCT volume (.nii.gz, .nii, .nrrd, .nhdr, .mha, "
            ".mhd, or a folder of DICOM files)"
        )
    return [{"image": str(p)} for p in found]


def output_name(metadict: dict | None, saver=None) -> dict:
    """``output_name_formatter`` of the bundle's ``SaveImaged``: names a prediction after its case (the input's
    file name without its volume extension in any case, or the DICOM series folder's name), so that
    ``CASE.NII.GZ``, ``CASE.nrrd`` and ``CASE/`` all give ``CASE_seg.nii.gz``."""
    source = str((metadict or {}).get("filename_or_obj", getattr(saver, "_data_index", 0)))
    name = Path(source.rstrip("/\\")).name
    stem = name if os.path.isdir(source) else strip_volume_extension(name)
    # the saver strips one extension (two for .gz) from what it is given: hand it the case name + ".nii.gz"
    return {"subject": f"{stem or name}.nii.gz", "idx": (metadict or {}).get("patch_index")}
