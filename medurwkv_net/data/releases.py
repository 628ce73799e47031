"""Readers for the public releases of the six 2D (photo) datasets of Med-URWKV, and datalist building
(NKUT, a CBCT release, has its own reader: :mod:`medurwkv_net.data.nkut`).

Every reader takes ``dataset_dir``: the folder an archive was unpacked into (e.g. the folder that
holds ``Kvasir-SEG/``), the release folder itself (``Kvasir-SEG/``), or one level above the
unpacking folder. It returns a :class:`Release` with the cases of every subset the release
ships. :func:`build_datalist` turns it into a MONAI/Decathlon-style datalist with the keys
``training``, ``validation`` and ``test``:

- the release's own train/validation/test split where it has one (ISIC 2017, ISIC 2018; GlaS has
  train + testA/testB, its validation set is carved from train with the seed);
- otherwise a split seeded by ``seed`` with ``fractions`` (train, validation, test), stratified by
  the release's subsets (e.g. BUSI benign/malignant/normal). The split, the seed and the fractions
  are written into the datalist so that it can be reproduced and audited.

Every case is ``{"image": path, "label": path or [paths], "case": id, "subset": name}``; the label
is a list only where a case has several masks that are to be united (BUSI).
Layouts read (exactly as the archives unpack):

- ``isic2018``: ``ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_*.jpg`` and
  ``ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_*_segmentation.png``.
- ``isic2017``: ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_*.jpg`` (``*_superpixels.png``
  and the metadata CSV are ignored) and ``ISIC-2017_{...}_Part1_GroundTruth/ISIC_*_segmentation.png``.
- ``kvasir``: ``Kvasir-SEG/images/*.jpg`` and ``Kvasir-SEG/masks/*.jpg`` (same file names).
- ``busi``: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png`` with ``NAME_mask.png`` and
  optionally ``NAME_mask_1.png``, ``NAME_mask_2.png``... (the label is their union); benign + malignant
  by default, the normal cases with ``include_normal=True``.
- ``glas``: ``train_N.bmp`` + ``train_N_anno.bmp``, ``testA_N[_anno].bmp``, ``testB_N[_anno].bmp``
  (annotations hold gland instance ids; foreground is id > 0).
- ``tdd`` (Tufts Dental Database): ``Radiographs/N.JPG`` + ``Segmentation/teeth_mask/N.jpg`` as the archives
  unpack (doubled folders such as ``Radiographs/Radiographs/`` are entered; extensions and folder names in
  any case), or ``images/`` + ``masks/``; empty teeth masks (edentulous cases) are valid.
  Other sub-folders (tdd) can be named with ``image_dir`` / ``mask_dir``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .folders import (
    IMAGE_SUFFIXES,
    _case,
    _check_dir,
    _find_sub,
    _image_folders,
    _images,
    _locate,
    _pair_by_name,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "RELEASES",
    "Release",
    "ReleaseSpec",
    "get_release",
    "read_busi",
    "read_glas",
    "read_isic2017",
    "read_isic2018",
    "read_kvasir",
    "read_release",
    "read_tdd",
]


@dataclass
class Release:
    """What a reader found: the release root and the cases of each subset it ships."""

    dataset: str
    root: Path
    subsets: dict[str, list[dict]]
    #: maps each official split key ("training", "validation", "test") to the subsets it is made of
    official: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReleaseSpec:
    """A dataset of the registry: its name, title, reader, mask threshold and the layout it reads."""

    name: str
    title: str
    reader: Callable[..., Release]
    #: ``threshold`` of :class:`medurwkv_net.data.transforms.LoadMaskd` (the bundles' ``label_threshold``):
    #: None = automatic (0/1 masks: > 0; 8-bit and JPEG masks: > 127), 0 = any id > 0 (GlaS instance ids)
    label_threshold: float | None
    layout: str


# ----------------------------------------------------------------------------- ISIC
_ISIC_IMAGE = re.compile(r"^(ISIC_\d+)\.jpe?g$", re.IGNORECASE)
_ISIC_MASK = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)


def _read_isic(dataset_dir, dataset: str, subsets: dict[str, tuple[str, str]]) -> Release:
    split_of = {"Training": "training", "Validation": "validation", "Test": "test", "Test_v2": "test"}
    train_in, train_gt = subsets["Training"]
    inner = [n for pair in subsets.values() for n in pair]
    root = _locate(
        dataset_dir,
        dataset,
        lambda p: _find_sub(p, train_in) is not None and _find_sub(p, train_gt) is not None,
        f"the folders '{train_in}/' (ISIC_*.jpg) and '{train_gt}/' (ISIC_*_segmentation.png)",
        inner_names=inner,
    )
    release = Release(dataset, root, {})
    for subset, (in_name, gt_name) in subsets.items():
        found_in, found_gt = _find_sub(root, in_name), _find_sub(root, gt_name)
        in_dir, gt_dir = found_in or root / in_name, found_gt or root / gt_name
        for d in (found_in, found_gt):
            if d is not None and d.parent.name.lower() == d.name.lower():
                release.notes.append(f"doubled folder read: '{d}'")
        if found_in is None and found_gt is None:
            continue
        if found_in is None or found_gt is None:
            missing = gt_dir if found_in is not None else in_dir
            release.notes.append(f"{subset} subset skipped: '{missing}' is missing")
            warnings.warn(f"{dataset}: the {subset} subset is skipped because '{missing}' is missing")
            continue
        images = {m.group(1): p for p in _images(in_dir) if (m := _ISIC_IMAGE.match(p.name))}
        masks = {m.group(1): p for p in _images(gt_dir) if (m := _ISIC_MASK.match(p.name))}
        pairs = _pair_by_name(images, masks, f"{dataset} {subset}", in_dir, gt_dir, "{case}_segmentation.png")
        release.subsets[subset] = [_case(i, m, c, subset) for c, i, m in pairs]
        release.official.setdefault(split_of[subset], []).append(subset)
    return release


def read_isic2018(dataset_dir) -> Release:
    """ISIC 2018 Task 1 (lesion boundary segmentation): Training / Validation / Test folder twins."""
    return _read_isic(
        dataset_dir,
        "isic2018",
        {
            s: (f"ISIC2018_Task1-2_{s}_Input", f"ISIC2018_Task1_{s}_GroundTruth")
            for s in ("Training", "Validation", "Test")
        },
    )


def read_isic2017(dataset_dir) -> Release:
    """ISIC 2017 Part 1 (lesion segmentation): Training / Validation / Test_v2 folder twins."""
    return _read_isic(
        dataset_dir,
        "isic2017",
        {s: (f"ISIC-2017_{s}_Data", f"ISIC-2017_{s}_Part1_GroundTruth") for s in ("Training", "Validation", "Test_v2")},
    )


# ----------------------------------------------------------------------------- images/ + masks/
def _stem_map(folder: Path, where: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in _images(folder):
        if p.stem in out:
            raise ValueError(
                f"{where}: '{out[p.stem].name}' and '{p.name}' in '{folder}' share the name "
                f"'{p.stem}'; keep one file per case"
            )
        out[p.stem] = p
    return out


#: the Tufts Dental Database as its archives unpack, then the generic images/ + masks/ layout
TDD_LAYOUTS = (("Radiographs", "Segmentation/teeth_mask"), ("images", "masks"))
_SUBDIR_HINT = (
    "if the images and masks are in other sub-folders, name them: --image_subdir X --mask_subdir Y "
    "(bundle configs) or --image_dir X --mask_dir Y (prepare-data)"
)


def _read_image_mask_folders(
    dataset_dir, dataset: str, layouts: Sequence[tuple[str, str]], subdir_options: bool = True
) -> Release:
    """Images and masks with the same file stem in two sub-folders; the first of ``layouts`` found wins.
    Folder names match case-insensitively and doubled folders (``X/X/``) are entered."""

    def pair(p: Path):
        for image_dir, mask_dir in layouts:
            a, b = _find_sub(p, image_dir), _find_sub(p, mask_dir)
            if a is not None and b is not None:
                return a, b
        return None

    expected = " or ".join(
        f"the folders '{i}/' (images) and '{m}/' (masks with the same file names)" for i, m in layouts
    )
    inner = tuple(dict.fromkeys(Path(x).parts[0] for lay in layouts for x in lay))
    folders = _image_folders(_check_dir(dataset_dir))
    root = _locate(
        dataset_dir,
        dataset,
        lambda p: pair(p) is not None,
        expected,
        inner_names=inner,
        hint=f"{_SUBDIR_HINT}; {folders}" if subdir_options else folders,
    )
    in_dir, gt_dir = pair(root)
    images, masks = _stem_map(in_dir, dataset), _stem_map(gt_dir, dataset)
    if not images:
        raise ValueError(
            f"{dataset}: no images ({'/'.join(IMAGE_SUFFIXES)}, any case) in '{in_dir}'; "
            f"{_image_folders(root)}" + (f"; {_SUBDIR_HINT}" if subdir_options else "")
        )
    pairs = _pair_by_name(images, masks, dataset, in_dir, gt_dir, "{case}.<png|jpg|jpeg|bmp>")
    release = Release(dataset, root, {"all": [_case(i, m, c, "all") for c, i, m in pairs]})
    for d in (in_dir, gt_dir):
        if d.parent.name.lower() == d.name.lower():
            release.notes.append(f"doubled folder read: '{d}'")
    return release


def read_kvasir(dataset_dir) -> Release:
    """Kvasir-SEG: ``Kvasir-SEG/images/*.jpg`` with JPEG masks of the same names in ``masks/``."""
    return _read_image_mask_folders(dataset_dir, "kvasir", [("images", "masks")], subdir_options=False)


def read_tdd(dataset_dir, image_dir: str | None = None, mask_dir: str | None = None) -> Release:
    """Tufts Dental Database as its archives unpack: ``Radiographs/N.JPG`` + ``Segmentation/teeth_mask/N.jpg``
    (``Segmentation/maxillomandibular/``, ``Expert/``, ``Student/`` are ignored), or ``images/`` + ``masks/``;
    ``image_dir``/``mask_dir`` name other sub-folders. Empty masks (edentulous cases) are valid."""
    layouts: Sequence[tuple[str, str]]
    if image_dir is None and mask_dir is None:
        layouts = TDD_LAYOUTS
    else:
        layouts = [(image_dir or TDD_LAYOUTS[0][0], mask_dir or TDD_LAYOUTS[0][1])]
    return _read_image_mask_folders(dataset_dir, "tdd", layouts)


# ----------------------------------------------------------------------------- BUSI
BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_MASK = re.compile(r"^(?P<name>.+)_mask(?:_(?P<k>\d+))?\.png$", re.IGNORECASE)


def read_busi(dataset_dir, include_normal: bool = False) -> Release:
    """BUSI: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png`` with ``NAME_mask.png`` and
    optional ``NAME_mask_1.png``, ``NAME_mask_2.png``...; the label of a case is the list of its masks
    (to be united). ``include_normal``: also the normal cases (empty masks); the default, benign +
    malignant (647 cases in the release), is the common benchmark setting."""
    root = _locate(
        dataset_dir,
        "busi",
        lambda p: any((p / c).is_dir() for c in BUSI_CLASSES) and p.name not in BUSI_CLASSES,
        "the folder 'Dataset_BUSI_with_GT/' with 'benign/', 'malignant/' and 'normal/' holding "
        "'NAME.png' + 'NAME_mask.png' [+ 'NAME_mask_1.png']",
        inner_names=BUSI_CLASSES,
    )
    release = Release("busi", root, {})
    for cls in BUSI_CLASSES:
        folder = root / cls
        if cls == "normal" and not include_normal:
            release.notes.append("normal cases (empty masks) not used: include_normal is false")
            continue
        if not folder.is_dir():
            release.notes.append(f"class folder '{folder}' is missing")
            warnings.warn(f"busi: class folder '{folder}' is missing")
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in _images(folder):
            m = _BUSI_MASK.match(p.name)
            if m:
                masks.setdefault(m.group("name"), []).append((int(m.group("k") or 0), p))
            elif p.suffix.lower() == ".png":
                images[p.stem] = p
        no_image = sorted(set(masks) - set(images))
        if no_image:
            raise ValueError(
                f"busi: mask '{masks[no_image[0]][0][1]}' has no image "
                f"'{folder / (no_image[0] + '.png')}'; restore the image from the archive or remove "
                "the mask"
            )
        no_mask = sorted(set(images) - set(masks))
        if no_mask:
            raise ValueError(
                f"busi: image '{images[no_mask[0]]}' has no mask "
                f"'{folder / (no_mask[0] + '_mask.png')}'; restore it from the archive"
            )
        for name in sorted(masks):
            ks = sorted(k for k, _ in masks[name])
            if 0 not in ks:
                raise ValueError(
                    f"busi: case '{cls}/{name}' has '{sorted(masks[name])[0][1]}' but no first mask "
                    f"'{folder / (name + '_mask.png')}'; restore '{name}_mask.png' from the archive (a case's masks "
                    f"are NAME_mask.png, NAME_mask_1.png, ... and are united)"
                )
            if len(set(ks)) != len(ks):
                dup = [str(p) for k, p in sorted(masks[name]) if ks.count(k) > 1]
                raise ValueError(f"busi: case '{cls}/{name}' has the same mask twice: {dup}; keep one of them")
        release.subsets[cls] = [
            _case(images[n], [p for _, p in sorted(masks[n])], f"{cls}/{n}", cls) for n in sorted(images)
        ]
    if not any(release.subsets.values()):
        raise ValueError(
            f"busi: no cases found in the class folders of '{root}'"
            + ("" if include_normal else " (normal cases are excluded: include_normal is false)")
        )
    return release


# ----------------------------------------------------------------------------- GlaS
_GLAS = re.compile(r"^(?P<subset>train|testA|testB)_(?P<n>\d+)(?P<anno>_anno)?\.bmp$", re.IGNORECASE)


def read_glas(dataset_dir) -> Release:
    """GlaS (Warwick QU): ``train_N.bmp`` + ``train_N_anno.bmp``, ``testA_*``, ``testB_*``."""

    def is_root(p: Path) -> bool:
        return any(_GLAS.match(f.name) and f.name.lower().startswith("train_") for f in p.glob("*.bmp"))

    root = _locate(
        dataset_dir,
        "glas",
        is_root,
        "'train_N.bmp' with 'train_N_anno.bmp' (and 'testA_N[_anno].bmp', 'testB_N[_anno].bmp') "
        "in one folder, e.g. 'Warwick QU Dataset (Released 2016_07_08)/'",
    )
    found: dict[str, dict[str, dict[str, Path]]] = {}
    for p in sorted(root.glob("*.bmp")):
        m = _GLAS.match(p.name)
        if not m:
            continue
        subset = {"train": "train", "testa": "testA", "testb": "testB"}[m.group("subset").lower()]
        kind = "mask" if m.group("anno") else "image"
        found.setdefault(subset, {"image": {}, "mask": {}})[kind][f"{subset}_{m.group('n')}"] = p
    release = Release("glas", root, {})
    for subset in ("train", "testA", "testB"):
        if subset not in found:
            release.notes.append(f"{subset} subset is missing")
            continue
        pairs = _pair_by_name(
            found[subset]["image"], found[subset]["mask"], f"glas {subset}", root, root, "{case}_anno.bmp"
        )
        release.subsets[subset] = [
            _case(i, m, c, subset) for c, i, m in sorted(pairs, key=lambda t: int(t[0].split("_")[1]))
        ]
    release.official = {"training": ["train"], "test": [s for s in ("testA", "testB") if s in release.subsets]}
    return release


# ----------------------------------------------------------------------------- registry
RELEASES: dict[str, ReleaseSpec] = {
    "isic2017": ReleaseSpec(
        "isic2017",
        "ISIC 2017 Part 1",
        read_isic2017,
        None,
        "ISIC-2017_{Training,Validation,Test_v2}_Data/ + ..._Part1_GroundTruth/",
    ),
    "isic2018": ReleaseSpec(
        "isic2018",
        "ISIC 2018 Task 1",
        read_isic2018,
        None,
        "ISIC2018_Task1-2_{Training,Validation,Test}_Input/ + ISIC2018_Task1_..._GroundTruth/",
    ),
    "glas": ReleaseSpec("glas", "GlaS (Warwick QU)", read_glas, 0, "train_N.bmp + train_N_anno.bmp, testA_*, testB_*"),
    "tdd": ReleaseSpec(
        "tdd", "Tufts Dental Database", read_tdd, None, "Radiographs/ + Segmentation/teeth_mask/ (or images/ + masks/)"
    ),
    "busi": ReleaseSpec(
        "busi", "BUSI", read_busi, None, "Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png + NAME_mask[_K].png"
    ),
    "kvasir": ReleaseSpec("kvasir", "Kvasir-SEG", read_kvasir, None, "Kvasir-SEG/images/ + Kvasir-SEG/masks/"),
}


def get_release(dataset: str) -> ReleaseSpec:
    """The registry entry of ``dataset`` (any case; ``-``/``_`` ignored; a few aliases such as ``kvasirseg``).

    Raises:
        KeyError: an unknown dataset (the message lists the known ones).
    """
    key = str(dataset).lower().replace("-", "").replace("_", "")
    aliases = {"kvasirseg": "kvasir", "tufts": "tdd", "isic17": "isic2017", "isic18": "isic2018"}
    key = aliases.get(key, key)
    if key not in RELEASES:
        raise KeyError(f"unknown dataset '{dataset}'; known: {', '.join(RELEASES)}")
    return RELEASES[key]


def read_release(dataset: str, dataset_dir, **reader_kwargs) -> Release:
    """Read the release of ``dataset`` unpacked under ``dataset_dir`` with its reader."""
    return get_release(dataset).reader(dataset_dir, **reader_kwargs)
