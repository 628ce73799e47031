"""Finding the cases of an NKUT release on disk: the image volumes and their label maps, matched by name.

Layout read (folder names and extensions in any case)::

    <dataset_dir>/                      the folder the release was unpacked into; the release folder itself,
                                        a doubled top folder (NKUT/NKUT/) and up to three levels below work
      images/  (or image/)              one volume per case: CASE.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd,
                                        or CASE/ holding the DICOM slices of one series
      labels/  (or label/)
        tooth/CASE.<ext>                0 background, 1 wisdom tooth, 2 second molar
        bone/CASE.<ext>                 0 background, 1 alveolar bone (0/255 accepted)
        binary/CASE.<ext>               optional: 0 background, 1 foreground (0/255 accepted); checked only
      or
      labels/CASE.<ext>                 one label map per case holding the class indices

Cases are matched by their name: the file name without its volume extension, compared in lower case, with
one trailing role word (``_image``, ``_label``, ``_seg``, ``_tooth``, ``-bone``, ``_0000``, ...) ignored, so
``Case01.NII.GZ`` pairs with ``case01_tooth.nii.gz``. Hidden files (``._*`` resource forks, ``.DS_Store``)
and the raw data files beside ``.mhd``/``.nhdr`` headers are not cases.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from medurwkv_net.core.errors import DatasetError

from ..folders import _check_dir, _child, _listing, _locate

__all__ = [
    "IMAGE_FOLDERS",
    "LABEL_FOLDERS",
    "LABEL_MAPS",
    "VOLUME_EXTENSIONS",
    "Case",
    "NkutRelease",
    "case_key",
    "describe",
    "find_volumes",
    "fingerprint",
    "is_dicom_series",
    "read_release",
    "strip_volume_extension",
    "volume_stem",
]

#: file endings of the volume formats MONAI's LoadImage reads (NIfTI: nibabel; NRRD: pynrrd or itk; MHA/MHD: itk)
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_FOLDERS = ("images", "image")
LABEL_FOLDERS = ("labels", "label")
#: the release's label-map folders; tooth and bone are required, binary is optional
LABEL_MAPS = ("tooth", "bone", "binary")
_ROLE = re.compile(r"[_\-.](image|img|cbct|volume|vol|label|labels|seg|mask|gt|binary|tooth|bone|0000)$")
_EXT_TEXT = "|".join(e.lstrip(".") for e in VOLUME_EXTENSIONS)


@dataclass
class Case:
    """One case: its image volume (a file or a DICOM series folder) and its label map(s) by role."""

    case: str
    image: Path
    labels: dict[str, Path]  # {"tooth", "bone"[, "binary"]} or {"label"}


@dataclass
class NkutRelease:
    """The cases found under a release root, and how they were found."""

    root: Path
    image_dir: Path
    label_dir: Path
    layout: str  # "maps" (labels/{tooth,bone[,binary]}/) or "single" (labels/CASE.<ext>)
    cases: list[Case]
    notes: list[str] = field(default_factory=list)


def volume_stem(path: Path) -> str | None:
    """The file name without its volume extension (any case), the folder name of a DICOM series, else None."""
    if path.name.startswith("."):
        return None
    if path.is_dir():
        return path.name if is_dicom_series(path) else None
    return strip_volume_extension(path.name)


def strip_volume_extension(name: str) -> str | None:
    """``name`` without its volume extension (matched in any case), or None when it has none."""
    low = name.lower()
    for ext in VOLUME_EXTENSIONS:
        if low.endswith(ext) and len(low) > len(ext):
            return name[: -len(ext)]
    return None


def is_dicom_series(folder: Path, probe: int = 5) -> bool:
    """True when ``folder`` holds DICOM files: a ``.dcm`` name, or the ``DICM`` marker at byte 128."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return False
    if any(p.suffix.lower() == ".dcm" for p in files):
        return True
    for p in files[:probe]:
        try:
            with open(p, "rb") as f:
                f.seek(128)
                if f.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def case_key(stem: str) -> str:
    """The name cases are matched by: the lower-case stem without one trailing role word."""
    low = stem.lower()
    return _ROLE.sub("", low) or low


def find_volumes(folder: Path, what: str) -> dict[str, Path]:
    """``{case key: path}`` of the volumes directly in ``folder``; two volumes of one case are an error."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = volume_stem(p)
        if stem is None:
            continue
        key = case_key(stem)
        if key in out:
            raise DatasetError(
                f"nkut: {what} '{out[key]}' and '{p}' belong to the same case '{key}'; keep one "
                "file per case in that folder"
            )
        out[key] = p
    return out


def _undouble(folder: Path) -> Path:
    """``images/images/`` (a folder unpacked into one of its own name) -> the inner one, when the outer
    folder holds no volume of its own."""
    while True:
        inner = _child(folder, folder.name)
        if inner is None or any(volume_stem(p) for p in folder.iterdir()):
            return folder
        folder = inner


def _sub(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        found = _child(root, name)
        if found is not None:
            return _undouble(found)
    return None


def _is_root(p: Path, image_names: tuple[str, ...], label_names: tuple[str, ...]) -> bool:
    return _sub(p, image_names) is not None and _sub(p, label_names) is not None


def _label_layout(label_dir: Path) -> tuple[str, dict[str, Path]]:
    maps = {m: _child(label_dir, m) for m in LABEL_MAPS}
    present = {m: p for m, p in maps.items() if p is not None}
    if present:
        missing = [m for m in ("tooth", "bone") if m not in present]
        if missing:
            raise DatasetError(
                f"nkut: '{label_dir}' has the label-map folder(s) {sorted(present)} but not {missing}: the "
                "4-class label map is built from tooth/ and bone/ (binary/ is optional); restore the missing "
                f"folder from the release, or put one label map per case directly in '{label_dir}'"
            )
        return "maps", {m: _undouble(p) for m, p in present.items()}
    if any(volume_stem(p) for p in label_dir.iterdir()):
        return "single", {"label": label_dir}
    raise DatasetError(
        f"nkut: '{label_dir}' holds neither the label-map folders tooth/ and bone/ (and optionally binary/) nor "
        f"label volumes ({_EXT_TEXT}); it contains {_listing(label_dir)}"
    )


def _pair(images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path) -> None:
    no_label = sorted(set(images) - set(labels))
    if no_label:
        first = images[no_label[0]]
        others = ", ".join(images[k].name for k in no_label[1:6]) + (", ..." if len(no_label) > 6 else "")
        raise DatasetError(
            f"nkut: {len(no_label)} image(s) have no label map in '{label_dir}': '{first}' needs "
            f"'{label_dir / (volume_stem(first) or first.name)}.<{_EXT_TEXT}>'"
            + (f" (others: {others})" if len(no_label) > 1 else "")
            + "; restore the label maps from the release, or remove those images"
        )
    no_image = sorted(set(labels) - set(images))
    if no_image:
        raise DatasetError(
            f"nkut: {len(no_image)} label map(s) in '{label_dir}' have no image in '{image_dir}', e.g. "
            f"'{labels[no_image[0]]}'; restore the image volume from the release, or remove the label map"
        )


def read_release(dataset_dir, image_dir: str | None = None, label_dir: str | None = None) -> NkutRelease:
    """Find the NKUT release under ``dataset_dir`` and pair every image volume with its label map(s).

    Args:
        dataset_dir: the folder the release was unpacked into (or the release folder itself).
        image_dir: the image folder's name if it is neither ``images/`` nor ``image/``.
        label_dir: the label folder's name if it is neither ``labels/`` nor ``label/``.

    Raises:
        DatasetError: naming the folder or file at fault and what to do (no release found, a label-map
            folder missing, an image without label map or a label map without image, two files of one case).
    """
    images_names = (image_dir,) if image_dir else IMAGE_FOLDERS
    labels_names = (label_dir,) if label_dir else LABEL_FOLDERS
    try:
        top = _check_dir(dataset_dir)
        root = _locate(
            top,
            "nkut",
            lambda p: _is_root(p, images_names, labels_names),
            f"the folders '{images_names[0]}/' (CBCT volumes: {_EXT_TEXT} or DICOM series folders) and "
            f"'{labels_names[0]}/' (tooth/ + bone/ [+ binary/] label-map folders, or one label map per "
            "case)",
            inner_names=images_names + labels_names,
            max_depth=3,
            hint="other folder names: --image_subdir X --label_subdir Y (bundle configs), "
            "--image_dir X --mask_dir Y (prepare-data)",
        )
    except (ValueError, OSError) as e:
        raise DatasetError(str(e)) from None
    img_dir, lab_dir = _sub(root, images_names), _sub(root, labels_names)
    assert img_dir is not None and lab_dir is not None  # _locate accepted root because _is_root found both
    images = find_volumes(img_dir, "image")
    if not images:
        raise DatasetError(
            f"nkut: no image volume ({_EXT_TEXT}, or a DICOM series folder) in '{img_dir}'; it "
            f"contains {_listing(img_dir)}"
        )
    layout, folders = _label_layout(lab_dir)
    release = NkutRelease(root, img_dir, lab_dir, layout, [])
    found = {}
    for role, folder in folders.items():
        found[role] = find_volumes(folder, f"{role} label map" if layout == "maps" else "label map")
        _pair(images, found[role], img_dir, folder)
    for key in sorted(images, key=lambda k: volume_stem(images[k]) or k):
        stem = volume_stem(images[key]) or key
        release.cases.append(Case(stem, images[key], {role: found[role][key] for role in folders}))
    for d in (root, img_dir, lab_dir, *folders.values()):
        if d.parent.name.lower() == d.name.lower():
            release.notes.append(f"doubled folder read: '{d}'")
    renamed = sorted(
        {
            p.name
            for c in release.cases
            for p in c.labels.values()
            if (label_stem := volume_stem(p)) and label_stem.lower() != case_key(label_stem)
        }
    )
    if renamed:
        release.notes.append(f"label maps matched without their role suffix, e.g. '{renamed[0]}'")
    return release


def describe(path: Path) -> str:
    """A path for messages: the file, or the DICOM series folder with its file count."""
    if path.is_dir():
        n = sum(1 for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return f"'{path}' (DICOM series, {n} files)"
    return f"'{path}'"


def fingerprint(path: Path) -> list:
    """``[path, bytes, mtime_ns]`` of a file, or of every file of a DICOM series folder (preparation reuse)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return [[str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in files]
