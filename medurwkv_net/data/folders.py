"""Finding a release's folders and pairing its files, as the archives unpack: names matched in any case,
doubled folders (``X/X/``) entered, and every message listing what the folder holds instead.

Used by the readers of :mod:`medurwkv_net.data.releases` and :mod:`medurwkv_net.data.nkut`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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


def _locate(
    dataset_dir,
    dataset: str,
    is_root: Callable[[Path], bool],
    expected: str,
    inner_names: Sequence[str] = (),
    max_depth: int = 2,
    hint: str = "",
) -> Path:
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
                + ", ".join(f"'{p}'" for p in found)
                + "; point dataset_dir at one of them"
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


def _pair_by_name(
    images: dict[str, Path], masks: dict[str, Path], where: str, image_dir: Path, mask_dir: Path, mask_pattern: str
) -> list[tuple[str, Path, Path]]:
    """Match images and masks by case id; any image without mask or mask without image is an error."""
    if not images:
        raise ValueError(
            f"{where}: no images ({'/'.join(IMAGE_SUFFIXES)}) in '{image_dir}'; it contains {_listing(image_dir)}"
            + (
                "; a folder unpacked inside a folder of another name: point dataset_dir at the folder that holds "
                f"'{image_dir.name}/' with the images directly inside it, or move them up"
                if _subdirs(image_dir)
                else ""
            )
        )
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
