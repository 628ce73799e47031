"""Reading NKUT volumes with MONAI's ``LoadImage`` and turning a case's label maps into one class-index map.

Classes (the four of the dataset's own benchmark; its WTNet segments the tooth map into background, wisdom
tooth and second molar, and the bone map into background and alveolar bone)::

    0 background    1 wisdom tooth (tooth map value 1)    2 second molar (tooth map value 2)
    3 alveolar bone (bone map value 1)

Overlaps: a voxel that both maps label is a tooth voxel (the teeth lie in the bone, so the tooth classes are
written over the bone class). The binary map (the structures together) adds no class: it is read, checked
against the image's grid and values, and every difference between it and the union of the other two maps is
counted in the preparation notes. Bone and binary maps stored as 0/255 are read as 0/1; any other value, and
any non-integer value, is refused with the file named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medurwkv_net.core.errors import DatasetError

from .release import Case, describe

__all__ = ["AFFINE_ATOL", "CLASS_NAMES", "load_volume", "read_label_map"]

CLASS_NAMES = ("background", "wisdom_tooth", "second_molar", "alveolar_bone")
#: largest difference (mm) between the affines of an image and its label maps
AFFINE_ATOL = 1e-3
_TOOTH = {0: "background", 1: "wisdom tooth", 2: "second molar"}


def _reader_missing(path: Path) -> str | None:
    """What to install when no installed reader takes ``path`` (None: a reader is there)."""
    from monai.utils import optional_import

    name = path.name.lower()
    has_itk = optional_import("itk")[1]
    if name.endswith((".mha", ".mhd")) and not has_itk:
        return "MetaImage (.mha/.mhd) files are read by ITK: pip install itk"
    if name.endswith((".nrrd", ".nhdr")) and not (has_itk or optional_import("nrrd")[1]):
        return "NRRD files are read by pynrrd or ITK: pip install pynrrd"
    if path.is_dir() and not (has_itk or optional_import("pydicom")[1]):
        return "DICOM series are read by pydicom or ITK: pip install pydicom"
    return None


def load_volume(path: Path, what: str):
    """``path`` as MONAI's ``LoadImage`` reads it (the reader the bundles' ``LoadImaged`` picks): a
    ``MetaTensor`` ``[1, X, Y, Z]`` with its affine.

    Raises:
        DatasetError: no installed reader (naming the package to install), an unreadable file, or a volume
            that is not one 3D channel.
    """
    from monai.transforms import LoadImage

    missing = _reader_missing(path)
    if missing:
        raise DatasetError(f"nkut: cannot read {what} {describe(path)}: {missing}")
    try:
        img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as e:  # the readers raise many types for corrupt data; all mean "unreadable"
        text = str(e).strip().splitlines()
        raise DatasetError(
            f"nkut: {what} {describe(path)} cannot be read (truncated or corrupt?): "
            f"{type(e).__name__}: {text[0] if text else ''}; replace it with an intact copy from "
            "the release"
        ) from None
    if img.ndim != 4 or img.shape[0] != 1:
        raise DatasetError(
            f"nkut: {what} {describe(path)} has the shape {tuple(img.shape[1:])} with "
            f"{img.shape[0]} channel(s): expected one 3D volume"
        )
    return img


def _check_grid(case: str, image, image_path: Path, label, label_path: Path, role: str) -> None:
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        raise DatasetError(
            f"nkut case '{case}': {role} {describe(label_path)} is {tuple(label.shape[1:])} voxels but the image "
            f"{describe(image_path)} is {tuple(image.shape[1:])}; a label map must lie on its image's voxel grid: "
            "re-export it on the image's grid (or replace it with the release's copy)"
        )
    a = np.asarray(image.affine, dtype=np.float64)
    b = np.asarray(label.affine, dtype=np.float64)
    diff = float(np.abs(a - b).max())
    if diff > AFFINE_ATOL:

        def spacing(m):
            return [round(float(np.linalg.norm(m[:3, i])), 4) for i in range(3)]

        raise DatasetError(
            f"nkut case '{case}': {role} {describe(label_path)} and the image {describe(image_path)} have "
            f"different geometry (affines differ by up to {diff:.4g} mm; spacing {spacing(b)} vs {spacing(a)}, "
            f"origin {b[:3, 3].round(3).tolist()} vs {a[:3, 3].round(3).tolist()}): the label map would not "
            "overlay its image; re-export it with the image's spacing, origin and orientation"
        )


def _integers(arr: np.ndarray, path: Path, role: str, case: str) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DatasetError(
                f"nkut case '{case}': {role} {describe(path)} holds NaN/Inf values; a label map "
                "holds class numbers only"
            )
        frac = arr != np.round(arr)
        if frac.any():
            raise DatasetError(
                f"nkut case '{case}': {role} {describe(path)} holds {int(frac.sum())} non-integer "
                f"values (e.g. {np.unique(arr[frac])[:3].tolist()}); a label map holds class numbers "
                "only (was it resampled with linear interpolation?)"
            )
    return np.round(arr).astype(np.int64)


def _refuse(arr: np.ndarray, bad: list[int], path: Path, role: str, case: str, expected: str, todo: str):
    counts = {v: int((arr == v).sum()) for v in bad[:6]}
    raise DatasetError(
        f"nkut case '{case}': {role} {describe(path)} holds the values {bad[:6]} (voxels per value: "
        f"{counts}) where {expected} are expected; {todo}"
    )


def _map_values(arr: np.ndarray, path: Path, role: str, what: str, case: str, num_classes: int) -> np.ndarray:
    values = np.unique(arr).tolist()
    if role == "tooth":
        bad = [v for v in values if v not in _TOOTH]
        if bad:
            _refuse(
                arr,
                bad,
                path,
                what,
                case,
                "0 background, 1 wisdom tooth, 2 second molar",
                "convert the map to these values, or give one label map per case (labels/CASE.<ext>) with "
                "--class_names",
            )
        return arr
    if role in ("bone", "binary"):
        if set(values) <= {0, 1}:
            return arr
        if set(values) <= {0, 255}:
            return (arr > 0).astype(np.int64)
        _refuse(
            arr,
            [v for v in values if v not in (0, 1)],
            path,
            what,
            case,
            "0 and 1 (or 0 and 255)",
            "convert the map to 0 = background, 1 = foreground",
        )
    bad = [v for v in values if not 0 <= v < num_classes]
    if bad:
        _refuse(
            arr,
            bad,
            path,
            what,
            case,
            f"the class indices 0..{num_classes - 1}",
            "pass --class_names with one name per class (background first) and --out_channels N, or convert "
            "the label map",
        )
    return arr


def read_label_map(case: Case, image, num_classes: int = len(CLASS_NAMES)) -> tuple[np.ndarray, list[str]]:
    """The class-index map of ``case`` on its image's grid (``uint8``, spatial shape of ``image``), and notes.

    Args:
        case: the case (its label maps by role: tooth, bone, binary; or one label map).
        image: the case's image as :func:`load_volume` returns it (its grid is the reference).
        num_classes: classes a single label map may hold (the three-map layout always gives 4).

    Raises:
        DatasetError: a label map that cannot be read, lies on another grid, or holds unknown values.
    """
    arrays = {}
    for role, path in case.labels.items():
        what = f"{role} label map" if role != "label" else "label map"
        lab = load_volume(path, what)
        _check_grid(case.case, image, case.image, lab, path, what)
        arrays[role] = _map_values(
            _integers(np.asarray(lab[0]), path, what, case.case), path, role, what, case.case, num_classes
        )
    notes: list[str] = []
    if "label" in arrays:
        return arrays["label"].astype(np.uint8), notes
    tooth, bone = arrays["tooth"], arrays["bone"]
    out = np.where(bone > 0, 3, 0).astype(np.uint8)
    out[tooth == 1] = 1
    out[tooth == 2] = 2
    if "binary" in arrays:
        inside = arrays["binary"] > 0
        labelled = out > 0
        missing, extra = int((labelled & ~inside).sum()), int((inside & ~labelled).sum())
        if missing or extra:
            notes.append(
                f"case '{case.case}': the binary map differs from tooth + bone by {missing} labelled voxels "
                f"outside it and {extra} of its voxels in neither map (the binary map is not used for the "
                "classes)"
            )
    return out, notes
