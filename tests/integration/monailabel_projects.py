"""The two MONAI Label projects of the server check: the app's bundle copies and their datastores.

A project is what one ``monailabel start_server`` serves: the monaibundle app (its ``model/`` folder holds the
bundles) and a studies folder in MONAI Label's local layout (images, ``labels/final/`` for the labelled ones).
MONAI Label trains every model on every labelled image of its datastore, so the NIfTI demo slices and the RGB
photos are two projects (two studies folders) served by the same app.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np


def install_bundle(bundle: Path, model_root: Path, train_overrides: dict) -> Path:
    """Copy ``bundle`` into the app's model folder, as a user drops a bundle with weights there.

    The copy leaves out the bundle's data and outputs (``models``, ``eval``, ``data``, ``runs``), gets
    ``models/model.pt`` (the state dict of inference.json's ``network_def``: MONAI Label serves a bundle only
    when its weights exist at start) and has ``train_overrides`` (``a#b`` ids of ``configs/train.json``)
    written into its train.json, so that one training epoch is small enough for a CPU check.

    Args:
        bundle: The bundle folder (``bundles/<name>``).
        model_root: The app's ``model/`` folder.
        train_overrides: Config ids of train.json and their new values.

    Returns:
        The copy's folder, ``model_root / bundle.name``.

    Raises:
        KeyError: An id of ``train_overrides`` is not in the bundle's train.json.
    """
    import torch
    from monai.bundle import ConfigParser

    target = model_root / bundle.name
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))

    train_file = target / "configs" / "train.json"
    train = ConfigParser()
    train.read_config(str(train_file))
    for key, value in train_overrides.items():
        if key not in train:
            raise KeyError(f"{train_file} has no config id {key!r}; the check's overrides name ids of train.json")
        train[key] = value
    train_file.write_text(json.dumps(train.config, indent=4) + "\n")

    inference = ConfigParser()
    inference.read_config(str(target / "configs" / "inference.json"))
    network = inference.get_parsed_content("network_def", instantiate=True)
    (target / "models").mkdir()
    torch.save(network.state_dict(), target / "models" / "model.pt")
    return target


def file_digest(path: Path) -> str:
    """SHA-256 of a file (to tell whether training rewrote ``models/model.pt``)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def channel_classes(bundle: Path) -> dict[int, str]:
    """The classes of ``outputs.pred.channel_def`` in the bundle's metadata.json, index -> name."""
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    pred = next(iter(metadata["network_data_format"]["outputs"].values()))
    return {int(index): name for index, name in pred["channel_def"].items()}


def demo_studies(studies: Path, scratch: Path) -> dict[str, tuple[int, ...]]:
    """The demo bundle's datastore: two MNI152 slices with final labels and one slice to segment.

    Args:
        studies: The studies folder to create.
        scratch: A folder for the prepared demo data (outside the app: the app reads only its datastore).

    Returns:
        The unlabelled slice's datastore id and its shape, ``{id: shape}``.
    """
    from medurwkv_net.data import mni152

    datalist = json.loads(Path(mni152.prepare(scratch)).read_text())
    (studies / "labels" / "final").mkdir(parents=True)
    for item in datalist["training"][::30][:2]:
        shutil.copy(scratch / item["image"], studies)
        shutil.copy(scratch / item["label"], studies / "labels" / "final")
    unlabelled = scratch / datalist["test"][0]["image"]
    shutil.copy(unlabelled, studies)
    return {_image_id(unlabelled): tuple(nib.load(unlabelled).shape)}


def photo(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic RGB photo (uint8, ``(height, width, 3)``) with a bright disc as the lesion, and its mask."""
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 4) ** 2
    rgb = (rng.random((height, width, 3)) * 80 + 40 + 120 * disc[..., None]).astype(np.uint8)
    return rgb, disc.astype(np.uint8)


def photo_studies(studies: Path) -> dict[str, tuple[int, ...]]:
    """A photo bundle's datastore: two RGB PNG photos with final label PNGs (class indices, as MONAI Label
    saves them) and one photo of another size to segment.

    Returns:
        The unlabelled photo's datastore id and its shape ``(height, width, 3)``, ``{id: shape}``.
    """
    from PIL import Image

    rng = np.random.default_rng(0)
    (studies / "labels" / "final").mkdir(parents=True)
    for i, (h, w) in enumerate([(120, 160), (140, 130)]):
        rgb, mask = photo(h, w, rng)
        Image.fromarray(rgb).save(studies / f"case{i}.png")
        Image.fromarray(mask).save(studies / "labels" / "final" / f"case{i}.png")
    rgb, _ = photo(150, 190, rng)
    Image.fromarray(rgb).save(studies / "photo_150x190.png")
    return {"photo_150x190": rgb.shape}


def _image_id(path: Path) -> str:
    """MONAI Label's local datastore id of an image file: its name without the extension."""
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem
