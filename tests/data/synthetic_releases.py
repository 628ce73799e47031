"""Tiny synthetic copies of the six public photo releases, in their exact unpacked layouts (NKUT, a CBCT
release: synthetic_nkut.py).

``make_release(dataset, root)`` writes one under ``root`` (the folder the archive would be unpacked
into) and returns a :class:`SyntheticRelease` with the folder to pass as ``dataset_dir`` and, for every
case, the foreground mask the readers and ``LoadMaskd`` must produce (``(H, W)`` bool, row-major).
Images have odd sizes and mix RGB and grayscale; the BUSI tree has a case with two masks, RGB and RGBA
masks and normal cases with empty masks; a TDD copy laid out as images/ + masks/ (``make_tdd(folders=True)``)
has a 16-bit image with a 16-bit mask; Kvasir-SEG and TDD masks are JPEG; GlaS annotations hold instance ids.
Shared by tests/data and tests/bundles (import it by path or with tests/data on sys.path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(41, 33), (37, 45), (53, 29), (35, 35), (47, 39), (33, 51)]  # (W, H), all odd


@dataclass
class SyntheticRelease:
    dataset: str
    dataset_dir: Path          # what the user passes (the unpacking folder)
    release_root: Path         # the release folder inside it
    masks: dict[str, np.ndarray] = field(default_factory=dict)   # case id -> (H, W) bool foreground
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # case id -> (W, H)
    lossy: bool = False        # JPEG masks: compare with a tolerance


def _blob(w: int, h: int, rng: np.random.Generator, empty: bool = False) -> np.ndarray:
    """A filled ellipse (bool (H, W)) covering a good part of the image."""
    if empty:
        return np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.2, 0.3) * h, rng.uniform(0.2, 0.3) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _photo(mask: np.ndarray, rng: np.random.Generator, mode: str) -> Image.Image:
    """An image whose foreground is brighter than the background (learnable), RGB or L."""
    h, w = mask.shape
    base = rng.integers(20, 90, size=(h, w, 3)).astype(np.float32)
    base[mask] += 120
    arr = np.clip(base, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img.convert("L") if mode == "L" else img


def _save_mask(mask: np.ndarray, path: Path, values: int = 255, rgb: bool = False, rgba: bool = False,
               bits: int = 8, **kw) -> None:
    """0/``values`` mask; ``rgb``: 3 equal channels; ``rgba``: RGB + an opaque alpha channel (as some BUSI
    masks are stored); ``bits=16``: a 16-bit grey PNG holding 0/65535."""
    if bits == 16:
        Image.fromarray(mask.astype(np.uint16) * 65535).save(path, **kw)
        return
    arr = mask.astype(np.uint8) * values
    img = Image.fromarray(arr, "L")
    (img.convert("RGBA") if rgba else img.convert("RGB") if rgb else img).save(path, **kw)


def _cases(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        yield i, w, h, rng


def _make_isic(root: Path, year: int, counts: dict[str, int], doubled: bool = False) -> SyntheticRelease:
    rel = SyntheticRelease(f"isic{year}", root, root)
    idx = 0
    for subset, n in counts.items():
        if year == 2018:
            in_dir = root / f"ISIC2018_Task1-2_{subset}_Input"
            gt_dir = root / f"ISIC2018_Task1_{subset}_GroundTruth"
        else:
            in_dir = root / f"ISIC-2017_{subset}_Data"
            gt_dir = root / f"ISIC-2017_{subset}_Part1_GroundTruth"
            if doubled and subset == "Training":  # the zip unpacked into a folder of its own name
                in_dir = in_dir / in_dir.name
        in_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        (in_dir / "LICENSE.txt").write_text("CC-BY-NC")
        (gt_dir / "ATTRIBUTION.txt").write_text("ISIC")
        if year == 2017:
            (in_dir / f"ISIC-2017_{subset}_Data_metadata.csv").write_text("image_id,age_approximate,sex\n")
        for i, w, h, rng in _cases(n, seed=year + idx):
            case = f"ISIC_{idx:07d}"
            idx += 1
            m = _blob(w, h, rng)
            _photo(m, rng, "RGB").save(in_dir / f"{case}.jpg", quality=95)
            _save_mask(m, gt_dir / f"{case}_segmentation.png")
            if year == 2017:  # superpixel maps (RGB-encoded indices) must be ignored
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                    in_dir / f"{case}_superpixels.png")
            rel.masks[case], rel.sizes[case] = m, (w, h)
    return rel


def make_isic2018(root: Path, counts=None) -> SyntheticRelease:
    return _make_isic(Path(root), 2018, counts or {"Training": 4, "Validation": 2, "Test": 2})


def make_isic2017(root: Path, counts=None, doubled: bool = False) -> SyntheticRelease:
    """ISIC 2017 Part 1 with ``*_superpixels.png`` beside the images and the metadata CSV; ``doubled``:
    ``ISIC-2017_Training_Data/ISIC-2017_Training_Data/``."""
    return _make_isic(Path(root), 2017, counts or {"Training": 4, "Validation": 2, "Test_v2": 2}, doubled)


def make_kvasir(root: Path, n: int = 10) -> SyntheticRelease:
    base = Path(root) / "Kvasir-SEG"
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir(parents=True)
    (base / "kavsir_bboxes.json").write_text("{}")
    rel = SyntheticRelease("kvasir", Path(root), base, lossy=True)
    for i, w, h, rng in _cases(n, seed=7):
        case = f"cju{i:04d}kvsr{i:03d}"
        m = _blob(w, h, rng)
        _photo(m, rng, "RGB").save(base / "images" / f"{case}.jpg", quality=95)
        _save_mask(m, base / "masks" / f"{case}.jpg", rgb=True, quality=90)  # JPEG masks, like the release
        rel.masks[case], rel.sizes[case] = m, (w, h)
    return rel


def make_busi(root: Path, per_class: int = 4, include_normal: bool = False) -> SyntheticRelease:
    """``Dataset_BUSI_with_GT/{benign,malignant,normal}/`` as the archive unpacks: names with spaces and
    parentheses, 'benign (1)' with ``_mask_1``, 'benign (2)' with ``_mask_1`` and ``_mask_2`` (labels are
    unions), an RGB and an RGBA mask, normal cases with empty masks. ``rel.masks`` holds the cases the
    reader gives with ``include_normal`` (the normal folder is always written)."""
    base = Path(root) / "Dataset_BUSI_with_GT"
    rel = SyntheticRelease("busi", Path(root), base)
    for k, cls in enumerate(("benign", "malignant", "normal")):
        (base / cls).mkdir(parents=True)
        for i, w, h, rng in _cases(per_class, seed=11 + k):
            name = f"{cls} ({i + 1})"
            m = _blob(w, h, rng, empty=cls == "normal")
            _photo(m, rng, "L" if i % 2 else "RGB").save(base / cls / f"{name}.png")
            _save_mask(m, base / cls / f"{name}_mask.png", rgb=i == 2, rgba=cls == "malignant" and i == 1)
            extra = {0: 1, 1: 2}.get(i, 0) if cls == "benign" else 0
            for j in range(1, extra + 1):  # further lesions in their own mask files: label = union
                m2 = np.zeros_like(m)
                m2[j:j + 4, 1:7] = True
                _save_mask(m2, base / cls / f"{name}_mask_{j}.png")
                m = m | m2
            if cls != "normal" or include_normal:
                rel.masks[f"{cls}/{name}"], rel.sizes[f"{cls}/{name}"] = m, (w, h)
    return rel


def make_glas(root: Path, counts=None) -> SyntheticRelease:
    base = Path(root) / "Warwick QU Dataset (Released 2016_07_08)"
    base.mkdir(parents=True)
    (base / "Grade.csv").write_text("name,patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)\n")
    rel = SyntheticRelease("glas", Path(root), base)
    for subset, n in (counts or {"train": 5, "testA": 2, "testB": 2}).items():
        for i, w, h, rng in _cases(n, seed=sum(subset.encode()) + n):  # testA and testB differ
            case = f"{subset}_{i + 1}"
            m1 = _blob(w, h, rng)
            inst = np.zeros((h, w), np.uint8)
            inst[m1] = 1 + i  # gland instance ids, not 0/255
            inst[h - 6:h - 2, 2:7] = 2 + i
            _photo(inst > 0, rng, "RGB").save(base / f"{case}.bmp")
            Image.fromarray(inst, "L").save(base / f"{case}_anno.bmp")
            rel.masks[case], rel.sizes[case] = inst > 0, (w, h)
    return rel


def _make_folders(dataset: str, root: Path, n: int, image_ext: str, mask_ext: str, mode: str,
                  lossy: bool, sixteen_bit: bool = False) -> SyntheticRelease:
    base = Path(root)
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir(parents=True)
    rel = SyntheticRelease(dataset, base, base, lossy=lossy)
    for i, w, h, rng in _cases(n, seed=len(dataset)):
        case = f"{i + 1}"
        m = _blob(w, h, rng)
        photo = _photo(m, rng, mode)
        if sixteen_bit and i == 1:  # a 16-bit grey image (values up to 65535) with a 16-bit mask
            Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(
                base / "images" / f"{case}{image_ext}")
            _save_mask(m, base / "masks" / f"{case}{mask_ext}", bits=16)
        else:
            photo.save(base / "images" / f"{case}{image_ext}")
            _save_mask(m, base / "masks" / f"{case}{mask_ext}", **({"quality": 90} if lossy else {}))
        rel.masks[case], rel.sizes[case] = m, (w, h)
    return rel


TDD_NUMBERS = [1, 2, 4, 5, 7, 8, 11, 12, 13, 16, 17, 19]  # the archive's numbering has gaps


def make_tdd(root: Path, n: int = 10, doubled: bool = False, edentulous: int | None = 2,
             folders: bool = False) -> SyntheticRelease:
    """The Tufts Dental Database as its archives unpack: ``Radiographs/N.JPG`` (grey, upper-case extension),
    ``Segmentation/teeth_mask/N.jpg`` (3-channel JPEG masks, lower-case), ``Segmentation/maxillomandibular/``,
    ``Expert/``, ``Student/``. ``doubled``: the radiographs in ``Radiographs/Radiographs/`` (an archive
    unpacked into a folder of its own name). Case index ``edentulous`` has an empty teeth mask.
    ``folders``: a copy laid out as ``images/`` + ``masks/`` instead (PNG; case '2' is a 16-bit grey image
    with a 16-bit mask)."""
    if folders:
        return _make_folders("tdd", root, n, ".png", ".png", "RGB", lossy=False, sixteen_bit=True)
    base = Path(root)
    img_dir = base / "Radiographs" / ("Radiographs" if doubled else "")
    teeth, jaw = base / "Segmentation" / "teeth_mask", base / "Segmentation" / "maxillomandibular"
    for d in (img_dir, teeth, jaw, base / "Expert", base / "Student"):
        d.mkdir(parents=True, exist_ok=True)
    (base / "Expert" / "expert.csv").write_text("Image,Description\n")
    (base / "Student" / "student.csv").write_text("Image,Description\n")
    rel = SyntheticRelease("tdd", base, base, lossy=True)
    for i, w, h, rng in _cases(n, seed=3):
        case = str(TDD_NUMBERS[i % len(TDD_NUMBERS)] + 20 * (i // len(TDD_NUMBERS)))
        m = _blob(w, h, rng, empty=i == edentulous)
        _photo(m, rng, "L").save(img_dir / f"{case}.JPG", format="JPEG", quality=95)
        _save_mask(m, teeth / f"{case}.jpg", rgb=True, quality=90)
        _save_mask(~m, jaw / f"{case}.jpg", rgb=True, quality=90)  # another label map: ignored
        rel.masks[case], rel.sizes[case] = m, (w, h)
    return rel


MAKERS = {
    "isic2017": make_isic2017,
    "isic2018": make_isic2018,
    "glas": make_glas,
    "tdd": make_tdd,
    "busi": make_busi,
    "kvasir": make_kvasir,
}


def make_release(dataset: str, root, **kwargs) -> SyntheticRelease:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return MAKERS[dataset](root, **kwargs)
