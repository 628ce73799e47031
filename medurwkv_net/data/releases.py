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

import json
import os
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from medurwkv_net.core.atomic import atomic_write_json

__all__ = [
    "RELEASES",
    "Release",
    "ReleaseSpec",
    "build_datalist",
    "check_cases",
    "check_pairs",
    "ensure_datalist",
    "get_release",
    "read_release",
    "seeded_split",
    "write_datalist",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_KEYS = ("training", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


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
    name: str
    title: str
    reader: Callable[..., Release]
    #: ``threshold`` of :class:`medurwkv_net.data.transforms.LoadMaskd` (the bundles' ``label_threshold``):
    #: None = automatic (0/1 masks: > 0; 8-bit and JPEG masks: > 127), 0 = any id > 0 (GlaS instance ids)
    label_threshold: float | None
    layout: str


# ----------------------------------------------------------------------------- helpers
def _check_dir(dataset_dir) -> Path:
    if dataset_dir is None or str(dataset_dir) == "":
        raise ValueError("dataset_dir is not set: pass the folder the dataset archive was unpacked into")
    path = Path(os.path.expanduser(str(dataset_dir)))
    if not path.exists():
        raise FileNotFoundError(f"dataset_dir '{path}' does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"dataset_dir '{path}' is not a folder")
    return path.resolve()


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError:
        return []


def _listing(path: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]" if names else "nothing (empty folder)"


def _image_folders(top: Path, max_depth: int = 3, limit: int = 8) -> str:
    """The folders under ``top`` (up to ``max_depth`` levels) that hold image files, with their counts."""
    found, level = [], [top]
    for _ in range(max_depth + 1):
        for p in level:
            n = len(_images(p))
            if n:
                found.append(f"'{p.relative_to(top).as_posix() if p != top else '.'}/' ({n} images)")
        level = [c for p in level for c in _subdirs(p)]
    if not found:
        return "no folder with images (png/jpg/jpeg/bmp) below it"
    more = f", ... ({len(found) - limit} more)" if len(found) > limit else ""
    return "folders with images: " + ", ".join(found[:limit]) + more


def _locate(dataset_dir, dataset: str, is_root: Callable[[Path], bool], expected: str,
            inner_names: Sequence[str] = (), max_depth: int = 2, hint: str = "") -> Path:
    """Find the release root: ``dataset_dir`` itself, its parent when ``dataset_dir`` is one of the
    release's inner folders (``inner_names``), or a folder up to ``max_depth`` levels below it."""
    top = _check_dir(dataset_dir)
    if top.name in inner_names and is_root(top.parent):
        return top.parent
    level = [top]
    for _ in range(max_depth + 1):
        found = [p for p in level if is_root(p)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(
                f"dataset_dir '{top}' holds several {dataset} releases: "
                + ", ".join(f"'{p}'" for p in found) + "; point dataset_dir at one of them"
            )
        level = [c for p in level for c in _subdirs(p)]
    raise ValueError(
        f"dataset_dir '{top}' holds no recognisable {dataset} release: expected {expected} "
        f"in it (or up to {max_depth} folder levels below it); it contains {_listing(top)}"
        + (f"; {hint}" if hint else "")
    )


def _images(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except (PermissionError, FileNotFoundError, NotADirectoryError):
        return []


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder ``name`` of ``folder``, matched case-insensitively when the exact name is absent."""
    exact = folder / name
    if exact.is_dir():
        return exact
    low = name.lower()
    matches = [p for p in _subdirs(folder) if p.name.lower() == low]
    return matches[0] if len(matches) == 1 else None


def _undouble(folder: Path) -> Path:
    """``X/X/`` (an archive unpacked into a folder of its own name) -> the inner ``X/``, when the outer
    folder holds no image of its own."""
    while not _images(folder):
        inner = _child(folder, folder.name)
        if inner is None:
            break
        folder = inner
    return folder


def _find_sub(root: Path, rel: str) -> Path | None:
    """``root/rel`` (``rel`` may have several parts), every part matched case-insensitively and doubled
    folders (``Radiographs/Radiographs/``) entered; None when a part is missing."""
    here = root
    for part in Path(rel).parts:
        nxt = _child(here, part)
        if nxt is None:
            return None
        here = _undouble(nxt)
    return here


def _case(image: Path, label, case: str, subset: str) -> dict:
    lab = [str(p) for p in label] if isinstance(label, (list, tuple)) else str(label)
    return {"image": str(image), "label": lab, "case": case, "subset": subset}


def _pair_by_name(images: dict[str, Path], masks: dict[str, Path], where: str, image_dir: Path,
                  mask_dir: Path, mask_pattern: str) -> list[tuple[str, Path, Path]]:
    """Match images and masks by case id; any image without mask or mask without image is an error."""
    if not images:
        raise ValueError(
            f"{where}: no images ({'/'.join(IMAGE_SUFFIXES)}) in '{image_dir}'; it contains {_listing(image_dir)}"
            + ("; a folder unpacked inside a folder of another name: point dataset_dir at the folder that holds "
               f"'{image_dir.name}/' with the images directly inside it, or move them up"
               if _subdirs(image_dir) else ""))
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask:
        first = no_mask[0]
        raise ValueError(
            f"{where}: {len(no_mask)} image(s) in '{image_dir}' have no mask in '{mask_dir}', e.g. "
            f"'{images[first].name}' needs '{mask_pattern.format(case=first)}'"
            + (f" (others: {', '.join(no_mask[1:5])}{', ...' if len(no_mask) > 5 else ''})" if len(no_mask) > 1 else "")
        )
    if no_image:
        raise ValueError(
            f"{where}: {len(no_image)} mask(s) in '{mask_dir}' have no image in '{image_dir}', e.g. "
            f"'{masks[no_image[0]].name}'"
        )
    return [(c, images[c], masks[c]) for c in sorted(images)]


# ----------------------------------------------------------------------------- ISIC
_ISIC_IMAGE = re.compile(r"^(ISIC_\d+)\.jpe?g$", re.IGNORECASE)
_ISIC_MASK = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)


def _read_isic(dataset_dir, dataset: str, subsets: dict[str, tuple[str, str]]) -> Release:
    split_of = {"Training": "training", "Validation": "validation", "Test": "test", "Test_v2": "test"}
    train_in, train_gt = subsets["Training"]
    inner = [n for pair in subsets.values() for n in pair]
    root = _locate(
        dataset_dir, dataset,
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
    return _read_isic(dataset_dir, "isic2018", {
        s: (f"ISIC2018_Task1-2_{s}_Input", f"ISIC2018_Task1_{s}_GroundTruth")
        for s in ("Training", "Validation", "Test")
    })


def read_isic2017(dataset_dir) -> Release:
    """ISIC 2017 Part 1 (lesion segmentation): Training / Validation / Test_v2 folder twins."""
    return _read_isic(dataset_dir, "isic2017", {
        s: (f"ISIC-2017_{s}_Data", f"ISIC-2017_{s}_Part1_GroundTruth")
        for s in ("Training", "Validation", "Test_v2")
    })


# ----------------------------------------------------------------------------- images/ + masks/
def _stem_map(folder: Path, where: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in _images(folder):
        if p.stem in out:
            raise ValueError(f"{where}: '{out[p.stem].name}' and '{p.name}' in '{folder}' share the name "
                             f"'{p.stem}'; keep one file per case")
        out[p.stem] = p
    return out


#: the Tufts Dental Database as its archives unpack, then the generic images/ + masks/ layout
TDD_LAYOUTS = (("Radiographs", "Segmentation/teeth_mask"), ("images", "masks"))
_SUBDIR_HINT = ("if the images and masks are in other sub-folders, name them: --image_subdir X --mask_subdir Y "
                "(bundle configs) or --image_dir X --mask_dir Y (prepare-data)")


def _read_image_mask_folders(dataset_dir, dataset: str, layouts: Sequence[tuple[str, str]],
                             subdir_options: bool = True) -> Release:
    """Images and masks with the same file stem in two sub-folders; the first of ``layouts`` found wins.
    Folder names match case-insensitively and doubled folders (``X/X/``) are entered."""
    def pair(p: Path):
        for image_dir, mask_dir in layouts:
            a, b = _find_sub(p, image_dir), _find_sub(p, mask_dir)
            if a is not None and b is not None:
                return a, b
        return None

    expected = " or ".join(f"the folders '{i}/' (images) and '{m}/' (masks with the same file names)"
                           for i, m in layouts)
    inner = tuple(dict.fromkeys(Path(x).parts[0] for lay in layouts for x in lay))
    folders = _image_folders(_check_dir(dataset_dir))
    root = _locate(dataset_dir, dataset, lambda p: pair(p) is not None, expected, inner_names=inner,
                   hint=f"{_SUBDIR_HINT}; {folders}" if subdir_options else folders)
    in_dir, gt_dir = pair(root)
    images, masks = _stem_map(in_dir, dataset), _stem_map(gt_dir, dataset)
    if not images:
        raise ValueError(f"{dataset}: no images ({'/'.join(IMAGE_SUFFIXES)}, any case) in '{in_dir}'; "
                         f"{_image_folders(root)}" + (f"; {_SUBDIR_HINT}" if subdir_options else ""))
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
        dataset_dir, "busi",
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
            raise ValueError(f"busi: mask '{masks[no_image[0]][0][1]}' has no image "
                             f"'{folder / (no_image[0] + '.png')}'; restore the image from the archive or remove "
                             "the mask")
        no_mask = sorted(set(images) - set(masks))
        if no_mask:
            raise ValueError(f"busi: image '{images[no_mask[0]]}' has no mask "
                             f"'{folder / (no_mask[0] + '_mask.png')}'; restore it from the archive")
        for name in sorted(masks):
            ks = sorted(k for k, _ in masks[name])
            if 0 not in ks:
                raise ValueError(
                    f"busi: case '{cls}/{name}' has '{sorted(masks[name])[0][1]}' but no first mask "
                    f"'{folder / (name + '_mask.png')}'; restore '{name}_mask.png' from the archive (a case's masks "
                    f"are NAME_mask.png, NAME_mask_1.png, ... and are united)")
            if len(set(ks)) != len(ks):
                dup = [str(p) for k, p in sorted(masks[name]) if ks.count(k) > 1]
                raise ValueError(f"busi: case '{cls}/{name}' has the same mask twice: {dup}; keep one of them")
        release.subsets[cls] = [
            _case(images[n], [p for _, p in sorted(masks[n])], f"{cls}/{n}", cls) for n in sorted(images)
        ]
    if not any(release.subsets.values()):
        raise ValueError(f"busi: no cases found in the class folders of '{root}'"
                         + ("" if include_normal else " (normal cases are excluded: include_normal is false)"))
    return release


# ----------------------------------------------------------------------------- GlaS
_GLAS = re.compile(r"^(?P<subset>train|testA|testB)_(?P<n>\d+)(?P<anno>_anno)?\.bmp$", re.IGNORECASE)


def read_glas(dataset_dir) -> Release:
    """GlaS (Warwick QU): ``train_N.bmp`` + ``train_N_anno.bmp``, ``testA_*``, ``testB_*``."""
    def is_root(p: Path) -> bool:
        return any(_GLAS.match(f.name) and f.name.lower().startswith("train_") for f in p.glob("*.bmp"))

    root = _locate(dataset_dir, "glas", is_root,
                   "'train_N.bmp' with 'train_N_anno.bmp' (and 'testA_N[_anno].bmp', 'testB_N[_anno].bmp') "
                   "in one folder, e.g. 'Warwick QU Dataset (Released 2016_07_08)/'")
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
        pairs = _pair_by_name(found[subset]["image"], found[subset]["mask"], f"glas {subset}", root, root,
                              "{case}_anno.bmp")
        release.subsets[subset] = [_case(i, m, c, subset) for c, i, m in
                                   sorted(pairs, key=lambda t: int(t[0].split("_")[1]))]
    release.official = {"training": ["train"], "test": [s for s in ("testA", "testB") if s in release.subsets]}
    return release


# ----------------------------------------------------------------------------- registry
RELEASES: dict[str, ReleaseSpec] = {
    "isic2017": ReleaseSpec("isic2017", "ISIC 2017 Part 1", read_isic2017, None,
                            "ISIC-2017_{Training,Validation,Test_v2}_Data/ + ..._Part1_GroundTruth/"),
    "isic2018": ReleaseSpec("isic2018", "ISIC 2018 Task 1", read_isic2018, None,
                            "ISIC2018_Task1-2_{Training,Validation,Test}_Input/ + ISIC2018_Task1_..._GroundTruth/"),
    "glas": ReleaseSpec("glas", "GlaS (Warwick QU)", read_glas, 0,
                        "train_N.bmp + train_N_anno.bmp, testA_*, testB_*"),
    "tdd": ReleaseSpec("tdd", "Tufts Dental Database", read_tdd, None,
                       "Radiographs/ + Segmentation/teeth_mask/ (or images/ + masks/)"),
    "busi": ReleaseSpec("busi", "BUSI", read_busi, None,
                        "Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png + NAME_mask[_K].png"),
    "kvasir": ReleaseSpec("kvasir", "Kvasir-SEG", read_kvasir, None, "Kvasir-SEG/images/ + Kvasir-SEG/masks/"),
}


def get_release(dataset: str) -> ReleaseSpec:
    key = str(dataset).lower().replace("-", "").replace("_", "")
    aliases = {"kvasirseg": "kvasir", "tufts": "tdd", "isic17": "isic2017", "isic18": "isic2018"}
    key = aliases.get(key, key)
    if key not in RELEASES:
        raise KeyError(f"unknown dataset '{dataset}'; known: {', '.join(RELEASES)}")
    return RELEASES[key]


def read_release(dataset: str, dataset_dir, **reader_kwargs) -> Release:
    return get_release(dataset).reader(dataset_dir, **reader_kwargs)


# ----------------------------------------------------------------------------- splitting
def _check_fractions(fractions) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, validation, test) summing "
                         f"to 1, got {fractions!r}")
    return fr


def seeded_split(cases: Sequence[dict], fractions=DEFAULT_FRACTIONS, seed: int = 0,
                 stratify: str | None = "subset") -> dict[str, list[dict]]:
    """Shuffle ``cases`` with ``random.Random(seed)`` (separately per ``stratify`` group) and cut them
    into training / validation / test by ``fractions``. Every non-zero fraction gets at least one case
    of each group that has enough cases; the order inside each split is by case id."""
    fr = _check_fractions(fractions)
    groups: dict[str, list[dict]] = {}
    for c in sorted(cases, key=lambda c: c["case"]):
        groups.setdefault(str(c.get(stratify, "")) if stratify else "", []).append(c)
    out: dict[str, list[dict]] = {k: [] for k in SPLIT_KEYS}
    for name in sorted(groups):
        items = list(groups[name])
        random.Random(f"{seed}:{name}").shuffle(items)
        n = len(items)
        n_val = round(n * fr[1])
        n_test = round(n * fr[2])
        if fr[1] > 0 and n_val == 0 and n >= 3:
            n_val = 1
        if fr[2] > 0 and n_test == 0 and n >= 3:
            n_test = 1
        n_val = min(n_val, n)
        n_test = min(n_test, n - n_val)
        out["validation"] += items[:n_val]
        out["test"] += items[n_val:n_val + n_test]
        out["training"] += items[n_val + n_test:]
    for k in out:
        out[k].sort(key=lambda c: c["case"])
    return out


def build_datalist(dataset: str, dataset_dir, seed: int = 0, fractions=DEFAULT_FRACTIONS,
                   **reader_kwargs) -> dict:
    """Read the release under ``dataset_dir`` and return its datalist (see the module docstring)."""
    spec = get_release(dataset)
    release = spec.reader(dataset_dir, **reader_kwargs)
    fr = _check_fractions(fractions)
    split_info: dict = {"seed": int(seed)}
    lists: dict[str, list[dict]] = {k: [] for k in SPLIT_KEYS}
    if release.official:
        for key, subsets in release.official.items():
            for s in subsets:
                lists[key] += release.subsets[s]
        split_info["official"] = {k: v for k, v in release.official.items()}
        carved = [k for k in ("validation", "test") if not lists[k]]
        if carved:
            # carve the missing official splits from the training cases, with the seed
            want = {"training": fr[0], "validation": fr[1] if "validation" in carved else 0.0,
                    "test": fr[2] if "test" in carved else 0.0}
            total = sum(want.values())
            sub = seeded_split(lists["training"], [want[k] / total for k in SPLIT_KEYS], seed)
            for k in SPLIT_KEYS:
                if k == "training" or k in carved:
                    lists[k] = sub[k]
            split_info["seeded_from_training"] = carved
            split_info["fractions"] = [want[k] / total for k in SPLIT_KEYS]
        split_info["method"] = "official" if not carved else "official+seeded"
    else:
        all_cases = [c for cs in release.subsets.values() for c in cs]
        lists = seeded_split(all_cases, fr, seed)
        split_info.update(method="seeded", fractions=list(fr), stratified_by="subset")
    return {
        "name": spec.title,
        "dataset": spec.name,
        "dataset_dir": str(release.root),
        "layout": spec.layout,
        "label_threshold": spec.label_threshold,
        "split": split_info,
        "notes": release.notes,
        "numTraining": len(lists["training"]),
        **lists,
    }


def write_datalist(datalist: dict, output) -> Path:
    return atomic_write_json(output, datalist, indent=2)


def check_cases(datalist: dict, max_problems: int = 10) -> dict:
    """Decode every image and mask of every split, so that a bad release fails before training with the
    files named: unreadable (truncated, corrupt) files, masks whose size differs from their image (all masks
    of a case, for BUSI), masks refused by the label conversion. Returns ``{split: {"cases": n,
    "empty_masks": [case ids]}}`` (empty masks are valid: BUSI normal, edentulous TDD cases).

    Raises:
        ValueError: listing up to ``max_problems`` problems, each with its split, case and file.
    """
    from .pairs import LabelPart, check_pair
    from .readers import load_file

    name = datalist.get("dataset", "")
    threshold = datalist.get("label_threshold")
    problems: list[str] = []
    report: dict = {}
    for key in SPLIT_KEYS:
        cases = datalist.get(key, [])
        report[key] = {"cases": len(cases), "empty_masks": []}
        for case in cases:
            where = f"{name} {key} case '{case['case']}'"
            try:
                image = load_file(case["image"])
            except Exception as e:  # readers raise many types for corrupt data; all mean "unreadable"
                problems.append(f"{where}: image '{case['image']}' cannot be read (truncated or corrupt?): "
                                f"{_first_line(e)}")
                continue
            parts = []
            for lab in case["label"] if isinstance(case["label"], list) else [case["label"]]:
                try:
                    parts.append(LabelPart(load_file(lab), f"mask '{lab}'", str(lab)))
                except Exception as e:
                    problems.append(f"{where}: mask '{lab}' cannot be read (truncated or corrupt?): {_first_line(e)}")
                    break
            else:
                pair = check_pair(image, parts, mask=True, threshold=threshold, image_what=f"image '{case['image']}'")
                if pair.errors:
                    problems.append(f"{where}: {pair.errors[0][1]}")
                elif not pair.foreground:
                    report[key]["empty_masks"].append(case["case"])
    if problems:
        more = f"\n... and {len(problems) - max_problems} more" if len(problems) > max_problems else ""
        raise ValueError(f"{name}: {len(problems)} problem(s) in the release; replace the named files with "
                         "intact copies from the archive (or remove those cases):\n"
                         + "\n".join(problems[:max_problems]) + more)
    return report


check_pairs = check_cases  # the former name


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _ensure(dataset: str, dataset_dir, datalist_file, seed: int = 0, fractions=DEFAULT_FRACTIONS,
            always_check: bool = False, **reader_kwargs) -> tuple[dict, dict | None]:
    datalist = build_datalist(dataset, dataset_dir, seed=seed, fractions=fractions, **reader_kwargs)
    path = Path(datalist_file)
    if path.is_file():
        try:
            if json.loads(path.read_text()) == datalist:
                return datalist, (check_cases(datalist) if always_check else None)
        except json.JSONDecodeError:
            pass  # rewritten below
    report = check_cases(datalist)
    write_datalist(datalist, path)
    return datalist, report


def ensure_datalist(dataset: str, dataset_dir, datalist_file, seed: int = 0, fractions=DEFAULT_FRACTIONS,
                    **reader_kwargs) -> dict:
    """Build the datalist of the release under ``dataset_dir`` and return it, writing it to
    ``datalist_file`` when that file is missing or differs (idempotent: an up-to-date file is left
    untouched). Every file is decoded and checked with :func:`check_cases` whenever the file is (re)written."""
    return _ensure(dataset, dataset_dir, datalist_file, seed=seed, fractions=fractions, **reader_kwargs)[0]
