"""Medical Segmentation Decathlon (MSD) tasks as they unpack (``Task01_BrainTumour/`` ... ``Task10_Colon/``).

Layout read::

    <task>/dataset.json   {"name", "modality": {"0": "CT", ...}, "labels": {"0": "background", ...},
                           "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...],
                           "test": ["./imagesTs/y.nii.gz", ...]}
    <task>/imagesTr/*.nii.gz   <task>/labelsTr/*.nii.gz   <task>/imagesTs/*.nii.gz

``dataset.json`` is the authority: files it does not list (e.g. the ``._*`` resource forks of the macOS-made
archives) are ignored, and every file it lists must exist. ``dataset_dir`` may be the task folder or a folder
holding exactly one task. Multi-modal tasks store 4D images (x, y, z, modality); the bundles' loading turns
the last axis into channels. The official test images have no labels, so :func:`prepare` splits the labelled
training cases with :func:`medurwkv_net.data.splits.seeded_split` (seed and fractions recorded) into
``training`` / ``validation`` / ``test`` and keeps the official unlabelled images as ``official_test``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .splits import DEFAULT_FRACTIONS, seeded_split, write_datalist

__all__ = ["check_task", "find_task", "read_task", "prepare", "test_images", "task_info"]


def find_task(dataset_dir: str | os.PathLike) -> Path:
    """The folder holding ``dataset.json``: ``dataset_dir`` itself or its only sub-folder that has one."""
    root = Path(dataset_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"MSD dataset_dir {root} is not a folder")
    if (root / "dataset.json").is_file():
        return root
    found = sorted(p.parent for p in root.glob("*/dataset.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"no dataset.json in {root} or its sub-folders; expected an MSD task folder such as "
            "Task09_Spleen/ with dataset.json, imagesTr/ and labelsTr/"
        )
    raise ValueError(f"{root} holds several MSD tasks {[p.name for p in found]}; point dataset_dir at one of them")


def _resolve(task: Path, rel: str, what: str) -> str:
    path = (task / rel).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"MSD {task.name}: {what} '{rel}' listed in dataset.json does not exist ({path})")
    return str(path)


def task_info(dataset_dir: str | os.PathLike) -> dict:
    """``dataset.json`` of the task, with its ``labels`` ordered by class index and checked to be 0..n-1."""
    task = find_task(dataset_dir)
    try:
        meta = json.loads((task / "dataset.json").read_text())
    except ValueError as e:
        raise ValueError(f"MSD {task.name}: dataset.json is not valid JSON: {e}") from e
    for key in ("labels", "training"):
        if key not in meta:
            raise ValueError(f"MSD {task.name}: dataset.json has no '{key}' entry (keys: {sorted(meta)})")
    labels = {int(k): v for k, v in meta["labels"].items()}
    if sorted(labels) != list(range(len(labels))):
        raise ValueError(f"MSD {task.name}: label indices must be 0..n-1, got {sorted(labels)}")
    meta["labels"] = {str(k): labels[k] for k in sorted(labels)}
    meta["task_dir"] = str(task)
    return meta


def read_task(dataset_dir: str | os.PathLike) -> tuple[list[dict], list[dict], dict]:
    """``(labelled cases, official test images, dataset.json)``; cases are ``{"image", "label", "case"}``."""
    meta = task_info(dataset_dir)
    task = Path(meta["task_dir"])
    cases = []
    for item in meta["training"]:
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise ValueError(f"MSD {task.name}: training entries need 'image' and 'label', got {item!r}")
        image = _resolve(task, item["image"], "image")
        case = Path(image).name.split(".")[0]
        cases.append({"image": image, "label": _resolve(task, item["label"], "label"), "case": case})
    if not cases:
        raise ValueError(f"MSD {task.name}: dataset.json lists no training cases")
    tests = [
        {"image": _resolve(task, rel if isinstance(rel, str) else rel["image"], "test image")}
        for rel in meta.get("test", [])
    ]
    return cases, tests, meta


def check_task(meta: dict, class_names: list[str] | None = None, in_channels: int | None = None) -> None:
    """Refuse a task whose labels or modalities differ from what a bundle is configured for.

    Raises:
        ValueError: naming the task's labels / modalities and the bundle ids to set.
    """
    name = Path(meta["task_dir"]).name
    labels = list(meta["labels"].values())
    if class_names is not None and len(labels) != len(class_names):
        raise ValueError(
            f"MSD {name} has {len(labels)} labels {labels}, the bundle is configured for {len(class_names)} "
            f'{list(class_names)}: pass --class_names "{labels}" --out_channels {len(labels)} to every command'
        )
    channels = max(len(meta.get("modality", {})), 1)
    if in_channels is not None and channels != int(in_channels):
        raise ValueError(
            f"MSD {name} has {channels} modalities {meta.get('modality', {})}, the bundle is configured for "
            f"{in_channels} input channel(s): pass --in_channels {channels} to every command"
        )


def prepare(
    dataset_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    class_names: list[str] | None = None,
    in_channels: int | None = None,
) -> str:
    """Write the datalist of the MSD task under ``dataset_dir`` (default ``<task>/datalist.json``) when it is
    missing or out of date, and return its path (what the MSD bundle's ``datalist_file`` calls).

    Args:
        dataset_dir: the task folder (or a folder holding one task).
        output: datalist path.
        seed: split seed.
        fractions: training / validation / test fractions of the labelled cases.
        class_names: when given, the task must have this many labels (see :func:`check_task`).
        in_channels: when given, the task must have this many modalities.

    Examples::

        >>> prepare("/data/Task09_Spleen")   # -> "/data/Task09_Spleen/datalist.json"
    """
    cases, tests, meta = read_task(dataset_dir)
    check_task(meta, class_names, in_channels)
    split = seeded_split(cases, fractions, seed, stratify=None)
    datalist = {
        "name": meta.get("name", Path(meta["task_dir"]).name),
        "task_dir": meta["task_dir"],
        "labels": meta["labels"],
        "modality": meta.get("modality", {}),
        "split": {"method": "seeded", "seed": int(seed), "fractions": [float(f) for f in fractions]},
        **split,
        "official_test": tests,
    }
    path = Path(output) if output is not None else Path(meta["task_dir"]) / "datalist.json"
    if path.is_file():
        try:
            if json.loads(path.read_text()) == datalist:
                return str(path.resolve())
        except ValueError:
            pass
    return str(write_datalist(datalist, path).resolve())


def test_images(dataset_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> list[dict]:
    """Inference input: the official (unlabelled) test images, or the test split when the task has none."""
    dl = json.loads(Path(prepare(dataset_dir, output)).read_text())
    return dl["official_test"] or [{"image": c["image"]} for c in dl["test"]]


setattr(test_images, "__test__", False)  # not a pytest test
