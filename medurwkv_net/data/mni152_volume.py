"""3D demo dataset: axial slabs of the MNI152 2009a template volume with grey/white-matter labels.

The template, the labels (0 background, 1 grey matter, 2 white matter) and the usable axial range are those
of the 2D demo (:mod:`medurwkv_net.data.mni152`: :func:`~medurwkv_net.data.mni152.load_template`,
:func:`~medurwkv_net.data.mni152.make_labels`, ``MIN_TISSUE_FRACTION``), so the 2D and 3D bundles learn the
same task. For 3D the usable axial range is cut into slabs of ``SLAB`` slices, ``GAP`` slices apart, assigned
in the cycle ``CYCLE`` (training, validation, training, test, training, test, training, validation; what
remains at the top goes to training), so that every held-out slab lies between two training slabs; each slab is
cropped in-plane to the brain's bounding box plus ``MARGIN`` voxels. The bundles train on random 3D patches of
the training slabs and validate / evaluate / infer on whole slabs with a sliding window.

Files written under ``dataset_dir`` (3D NIfTI, 1 mm voxels, affine of the slab in MNI space)::

    imagesTr/mni152_slab_z{z0:03d}.nii.gz   labelsTr/...   (training + validation)
    imagesTs/mni152_slab_z{z0:03d}.nii.gz   labelsTs/...   (test)
    datalist.json   {"training": [...], "validation": [...], "test": [...], "preparation": {...}}

:func:`prepare` is idempotent and safe to call from several processes (same mechanism as the 2D demo).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .mni152 import (
    BACKGROUND_THRESHOLD,
    CLASS_NAMES,
    MIN_TISSUE_FRACTION,
    _atomic_write_bytes,
    _gzip,
    _is_complete,
    load_template,
    make_labels,
)

__all__ = ["CLASS_NAMES", "GAP", "MARGIN", "SLAB", "prepare", "split_slabs"]

#: slices per slab
SLAB = 16
#: unused slices between two slabs
GAP = 2
#: in-plane margin (voxels) around the brain's bounding box
MARGIN = 6
CYCLE = ("training", "validation", "training", "test", "training", "test", "training", "validation")
_VERSION = 2


def split_slabs(
    labels: np.ndarray, slab: int = SLAB, gap: int = GAP, min_tissue_fraction: float = MIN_TISSUE_FRACTION
) -> dict[str, list[tuple[int, int]]]:
    """``{split: [(z0, z1), ...]}``: half-open axial ranges of the slabs of each split (module docstring)."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D volume, got shape {labels.shape}")
    if slab < 1 or gap < 0:
        raise ValueError(f"slab must be >= 1 and gap >= 0, got slab={slab}, gap={gap}")
    fraction = (labels > 0).reshape(-1, labels.shape[2]).mean(axis=0)
    usable = np.nonzero(fraction >= min_tissue_fraction)[0]
    if usable.size == 0:
        raise ValueError(f"no axial slice has a tissue fraction >= {min_tissue_fraction}")
    z, z_end = int(usable[0]), int(usable[-1]) + 1
    out: dict[str, list[tuple[int, int]]] = {"training": [], "validation": [], "test": []}
    i = 0
    while z_end - z >= slab:
        out[CYCLE[i % len(CYCLE)]].append((z, z + slab))
        z += slab + gap
        i += 1
    if z_end - z > 0 and i > 0:  # the remainder (thinner than a slab) goes to training
        out["training"].append((z, z_end))
    for name, slabs in out.items():
        if not slabs:
            raise ValueError(
                f"the usable axial range {int(usable[0])}..{z_end - 1} is too short for a {name} slab "
                f"of {slab} slices with gaps of {gap}"
            )
    return out


def _save_volume(path: Path, array: np.ndarray, affine: np.ndarray, origin: tuple[int, int, int]) -> None:
    import nibabel as nib

    aff = affine.copy()
    aff[:3, 3] = affine[:3, :3] @ np.asarray(origin, dtype=np.float64) + affine[:3, 3]
    img = nib.Nifti1Image(np.ascontiguousarray(array), aff)
    img.header.set_xyzt_units("mm")
    _atomic_write_bytes(path, _gzip(img.to_bytes()))


def _record(threshold: float, slab: int, gap: int) -> dict:
    return {
        "source": "nilearn MNI152 ICBM 2009a symmetric template (T1, GM and WM probability maps)",
        "kind": "3d_slabs",
        "version": _VERSION,
        "background_threshold": threshold,
        "min_tissue_fraction": MIN_TISSUE_FRACTION,
        "slab": slab,
        "gap": gap,
        "margin": MARGIN,
        "cycle": list(CYCLE),
        "classes": list(CLASS_NAMES),
    }


def prepare(
    dataset_dir: str | os.PathLike, background_threshold: float = BACKGROUND_THRESHOLD, slab: int = SLAB, gap: int = GAP
) -> str:
    """Write the 3D demo dataset under ``dataset_dir`` unless a matching one is there; return the datalist path.

    Args:
        dataset_dir: output folder (created if missing).
        background_threshold: see :func:`medurwkv_net.data.mni152.make_labels`.
        slab: slices per slab.
        gap: slices between slabs.

    Returns:
        path of ``datalist.json`` (``training``/``validation``/``test`` lists of ``{"image", "label", "z"}``,
        paths relative to the datalist; ``z`` is the slab's axial range).

    Examples::

        >>> datalist = prepare("data/mni152_3d")
        >>> monai.data.load_decathlon_datalist(datalist, True, "training")
    """
    root = Path(dataset_dir).expanduser().resolve()
    datalist_path = root / "datalist.json"
    record = _record(float(background_threshold), int(slab), int(gap))
    if _is_complete(datalist_path, record):
        return str(datalist_path)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"dataset_dir {root} exists and is not a folder")
    t1, p_gm, p_wm, affine = load_template()
    labels = make_labels(p_gm, p_wm, background_threshold)
    slabs = split_slabs(labels, slab, gap)
    xs, ys = np.nonzero(labels.any(axis=2))
    x0, x1 = max(int(xs.min()) - MARGIN, 0), min(int(xs.max()) + 1 + MARGIN, labels.shape[0])
    y0, y1 = max(int(ys.min()) - MARGIN, 0), min(int(ys.max()) + 1 + MARGIN, labels.shape[1])
    datalist: dict = {}
    for split, ranges in slabs.items():
        suffix = "Ts" if split == "test" else "Tr"
        entries = []
        for z0, z1 in ranges:
            name = f"mni152_slab_z{z0:03d}.nii.gz"
            image, label = Path(f"images{suffix}") / name, Path(f"labels{suffix}") / name
            _save_volume(root / image, t1[x0:x1, y0:y1, z0:z1], affine, (x0, y0, z0))
            _save_volume(root / label, labels[x0:x1, y0:y1, z0:z1], affine, (x0, y0, z0))
            entries.append({"image": image.as_posix(), "label": label.as_posix(), "z": [z0, z1]})
        datalist[split] = entries
    datalist["preparation"] = record
    _atomic_write_bytes(datalist_path, json.dumps(datalist, indent=1).encode())
    return str(datalist_path)
