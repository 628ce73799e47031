"""Demo dataset: axial slices of the MNI152 2009a template with grey/white-matter labels.

The nilearn wheel ships the ICBM 2009a symmetric template (T1, 197 x 233 x 189 voxels of 1 mm) and
the grey-matter (GM) and white-matter (WM) probability maps registered to it. They are read from the
installed package, so preparing this dataset needs no network.

Labels (one per voxel, uint8):

* 0 background: ``max(p_GM, p_WM) < BACKGROUND_THRESHOLD`` (CSF, skull, scalp, air),
* 1 grey matter and 2 white matter: otherwise, whichever probability is larger (ties go to GM).

Slices: the axial slices (third array axis) whose labelled tissue covers at least
``MIN_TISSUE_FRACTION`` of the slice form the usable range (z = 10..149 for the 2009a template). It is
cut into blocks, from bottom to top::

    train | gap | val | gap | train | gap | test | gap | train | ... | test | gap | train

``EVAL_ORDER`` lists the held-out blocks (``EVAL_BLOCK`` slices each, validation and test alternating,
three of each); a training block lies below the first, between every two and above the last, and
``GAP`` unused slices separate every two neighbouring blocks. The slices left over go to the training
blocks, as evenly as possible (lower blocks first). So every validation and test block is flanked by
training slices on both sides (the model interpolates between brain shapes it has seen instead of
extrapolating past the top or bottom of the brain), every split samples the brain from bottom to top,
and any two slices of different splits are at least ``GAP + 1`` slices apart (no neighbouring-slice
leakage). For the 2009a template: 56 training slices in 7 blocks of 8, 12 validation and 12 test
slices in 3 blocks of 4 each. Train, validation and test are thus disjoint unions of slice ranges;
:func:`split_slices` is the single definition of the split.

Files written under ``dataset_dir`` (2D NIfTI, 1 mm pixels, affine of the slice in MNI space)::

    imagesTr/mni152_z{z:03d}.nii.gz   labelsTr/mni152_z{z:03d}.nii.gz   (training + validation)
    imagesTs/mni152_z{z:03d}.nii.gz   labelsTs/mni152_z{z:03d}.nii.gz   (test)
    datalist.json   {"training": [...], "validation": [...], "test": [...], "preparation": {...}}

:func:`prepare` is idempotent and safe to call from several processes at once (every file is
written to a temporary name and renamed; ``datalist.json`` is written last and records the
preparation parameters, so a finished, matching preparation is detected and reused). The bundle
configs call it from the expression that defines ``datalist_file``, so
``python -m monai.bundle run training`` prepares the data on first use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from medurwkv_net.core.atomic import atomic_write_bytes

__all__ = [
    "BACKGROUND_THRESHOLD",
    "CLASS_NAMES",
    "EVAL_BLOCK",
    "EVAL_ORDER",
    "GAP",
    "MIN_TISSUE_FRACTION",
    "load_template",
    "make_labels",
    "prepare",
    "split_slices",
]

#: a voxel is tissue (GM or WM) when its larger tissue probability reaches this value
BACKGROUND_THRESHOLD = 0.5
#: slices whose labelled tissue covers less than this fraction of the slice are not used
MIN_TISSUE_FRACTION = 0.02
#: number of unused slices between two neighbouring blocks (always of different splits)
GAP = 5
#: slices in each validation or test block
EVAL_BLOCK = 4
#: the held-out blocks from bottom to top; training blocks lie below, between and above them
EVAL_ORDER = ("validation", "test", "validation", "test", "validation", "test")
CLASS_NAMES = ("background", "grey_matter", "white_matter")
_VERSION = 2  # bump when the preparation changes; older folders are then rewritten


def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(t1 uint8, p_gm float32, p_wm float32, affine)`` read from the installed nilearn package."""
    try:
        from nilearn import datasets
    except ImportError as e:  # pragma: no cover - nilearn is a declared dependency
        raise ImportError("the MNI152 demo dataset needs nilearn (pip install 'nilearn>=0.10')") from e

    t1_img = datasets.load_mni152_template(resolution=1)
    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    t1, gm, wm = (np.asarray(i.get_fdata(), dtype=np.float32) for i in (t1_img, gm_img, wm_img))
    if not (t1.shape == gm.shape == wm.shape) or t1.ndim != 3:
        raise ValueError(f"nilearn MNI152 template shapes differ: T1 {t1.shape}, GM {gm.shape}, WM {wm.shape}")
    # nilearn rescales all three to [0, 1]; store the T1 as uint8 like the files in the wheel
    t1_u8 = np.clip(np.rint(t1 / max(float(t1.max()), 1e-6) * 255.0), 0, 255).astype(np.uint8)
    return t1_u8, gm, wm, np.asarray(t1_img.affine, dtype=np.float64)


def make_labels(p_gm: np.ndarray, p_wm: np.ndarray, threshold: float = BACKGROUND_THRESHOLD) -> np.ndarray:
    """Labels 0/1/2 (background/GM/WM) from the probability maps; see the module docstring."""
    if p_gm.shape != p_wm.shape:
        raise ValueError(f"GM map shape {p_gm.shape} differs from WM map shape {p_wm.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"background threshold must be in (0, 1], got {threshold}")
    labels = np.where(p_wm > p_gm, 2, 1).astype(np.uint8)
    labels[np.maximum(p_gm, p_wm) < threshold] = 0
    return labels


def split_slices(labels: np.ndarray, min_tissue_fraction: float = MIN_TISSUE_FRACTION) -> dict[str, list[int]]:
    """Axial slice indices of each split (``training``, ``validation``, ``test``) for a 3D label volume.

    Layout (module docstring): training blocks at both ends of the usable range and between the held-out
    blocks of ``EVAL_ORDER`` (``EVAL_BLOCK`` slices each), ``GAP`` unused slices between neighbours.
    Raises ``ValueError`` when the usable range is too short to give every training block a slice.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D volume, got shape {labels.shape}")
    fraction = (labels > 0).reshape(-1, labels.shape[2]).mean(axis=0)
    usable = np.nonzero(fraction >= min_tissue_fraction)[0]
    if usable.size == 0:
        raise ValueError(f"no axial slice has a tissue fraction >= {min_tissue_fraction}")
    z, z_end = int(usable[0]), int(usable[-1]) + 1
    n_train_blocks = len(EVAL_ORDER) + 1
    n_train = (z_end - z) - len(EVAL_ORDER) * EVAL_BLOCK - 2 * len(EVAL_ORDER) * GAP
    if n_train < n_train_blocks:
        raise ValueError(
            f"the usable axial range z = {z}..{z_end - 1} ({z_end - z} slices) is too short for "
            f"{len(EVAL_ORDER)} held-out blocks of {EVAL_BLOCK} slices, {n_train_blocks} training blocks "
            f"and gaps of {GAP} slices"
        )
    base, extra = divmod(n_train, n_train_blocks)
    train_lengths = [base + (i < extra) for i in range(n_train_blocks)]
    blocks: list[tuple[str, int]] = [("training", train_lengths[0])]
    for name, length in zip(EVAL_ORDER, train_lengths[1:]):
        blocks += [(name, EVAL_BLOCK), ("training", length)]
    splits: dict[str, list[int]] = {"training": [], "validation": [], "test": []}
    for i, (name, length) in enumerate(blocks):
        if i:
            z += GAP
        splits[name].extend(range(z, z + length))
        z += length
    assert z == z_end, (z, z_end)  # the blocks and gaps tile the usable range exactly
    return splits


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _save_slice(path: Path, array2d: np.ndarray, affine3d: np.ndarray, z: int) -> None:
    import nibabel as nib

    affine = affine3d.copy()
    affine[:3, 3] = affine3d[:3, :3] @ np.array([0.0, 0.0, float(z)]) + affine3d[:3, 3]
    img = nib.Nifti1Image(np.ascontiguousarray(array2d), affine)
    img.header.set_xyzt_units("mm")
    _atomic_write_bytes(path, img.to_bytes() if not path.name.endswith(".gz") else _gzip(img.to_bytes()))


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=6, mtime=0)


def _preparation_record(threshold: float, min_tissue_fraction: float) -> dict:
    return {
        "source": "nilearn MNI152 ICBM 2009a symmetric template (T1, GM and WM probability maps)",
        "version": _VERSION,
        "background_threshold": threshold,
        "min_tissue_fraction": min_tissue_fraction,
        "gap": GAP,
        "eval_block": EVAL_BLOCK,
        "eval_order": list(EVAL_ORDER),
        "classes": list(CLASS_NAMES),
    }


def _is_complete(datalist_path: Path, record: dict) -> bool:
    try:
        datalist = json.loads(datalist_path.read_text())
    except (OSError, ValueError):
        return False
    if datalist.get("preparation") != record:
        return False
    root = datalist_path.parent
    for split in ("training", "validation", "test"):
        items = datalist.get(split)
        if not items:
            return False
        for item in items:
            if not ((root / item["image"]).is_file() and (root / item["label"]).is_file()):
                return False
    return True


def prepare(
    dataset_dir: str | os.PathLike,
    background_threshold: float = BACKGROUND_THRESHOLD,
    min_tissue_fraction: float = MIN_TISSUE_FRACTION,
) -> str:
    """Write the demo dataset under ``dataset_dir`` unless a matching one is there; return the datalist path.

    Args:
        dataset_dir: output folder (created if missing).
        background_threshold: see :func:`make_labels`.
        min_tissue_fraction: see :func:`split_slices`.

    Returns:
        path of ``datalist.json`` (MONAI decathlon datalist format with ``training``, ``validation`` and
        ``test`` lists of ``{"image", "label", "slice"}`` with paths relative to the datalist).
    """
    root = Path(dataset_dir).expanduser().resolve()
    datalist_path = root / "datalist.json"
    record = _preparation_record(float(background_threshold), float(min_tissue_fraction))
    if _is_complete(datalist_path, record):
        return str(datalist_path)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"dataset_dir {root} exists and is not a folder")

    t1, p_gm, p_wm, affine = load_template()
    labels = make_labels(p_gm, p_wm, background_threshold)
    splits = split_slices(labels, min_tissue_fraction)
    datalist: dict = {}
    for split, zs in splits.items():
        suffix = "Ts" if split == "test" else "Tr"
        entries = []
        for z in zs:
            name = f"mni152_z{z:03d}.nii.gz"
            image, label = Path(f"images{suffix}") / name, Path(f"labels{suffix}") / name
            _save_slice(root / image, t1[:, :, z], affine, z)
            _save_slice(root / label, labels[:, :, z], affine, z)
            entries.append({"image": image.as_posix(), "label": label.as_posix(), "slice": z})
        datalist[split] = entries
    datalist["preparation"] = record
    _atomic_write_bytes(datalist_path, json.dumps(datalist, indent=1).encode())
    return str(datalist_path)
