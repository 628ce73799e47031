"""MONAI Label serves and trains the demo bundle on NIfTI and a photo bundle on PNG (run by
.ci/monailabel_check.sh, in a venv with monailabel).

What a MONAI Label "monaibundle" app does with a bundle in its model folder, driven through monailabel's own
classes on CPU:

1. a LocalDatastore holding two demo slices with final labels (the app's studies folder);
2. ``BundleTrainTask`` trains the bundle for one epoch on that datastore (it overrides
   ``train#dataset#data`` / ``validate#dataset#data`` / ``train#trainer#max_epochs`` / ``device`` and runs
   ``initialize``; the model folder holds no data of the bundle's own), and the best model lands in
   ``models/model.pt``;
3. ``BundleInferTask`` reads inference.json + metadata.json, loads ``models/model.pt`` and segments a slice;
   the label it returns has the input's shape (no channel axis), dtype uint8 and only the classes of
   ``channel_def``;
4. with ``--photo-bundle``: the same for a photo bundle on RGB PNG photos (training on a PNG datastore,
   inference returning a PNG, or NIfTI, label of the photo's height and width).

``_update_overrides`` (MONAI Label's hook for derived tasks) only shrinks the crops and batches so that the
check runs in a few CPU minutes, and for the photo bundle turns off the ImageNet download (CI is offline).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle folder (bundles/medurwkv_mni152_tissue)")
    parser.add_argument("--photo-bundle", default=None, help="a photo bundle folder (bundles/medurwkv_kvasir)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.infer.bundle import BundleInferTask

    from medurwkv_net.data import mni152

    work = Path(args.workdir or tempfile.mkdtemp(prefix="monailabel_check_"))
    name = Path(args.bundle).name
    model_dir = work / "app" / "model" / name  # the monaibundle app's model folder
    shutil.copytree(args.bundle, model_dir, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))

    # the datastore: two training slices with final labels, in MONAI Label's local layout
    data_dir = work / "demo_data"  # outside the model folder: the app trains from its datastore only
    datalist = json.loads(Path(mni152.prepare(data_dir)).read_text())
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for item in datalist["training"][::30][:2]:
        shutil.copy(data_dir / item["image"], studies)
        shutil.copy(data_dir / item["label"], studies / "labels" / "final")
    datastore = LocalDatastore(str(studies), extensions=("*.nii.gz",), auto_reload=False)
    assert len(datastore.datalist()) == 2, datastore.datalist()

    train_one_epoch(model_dir, datastore, {"spatial_size": [64, 64], "num_samples": 1, "batch_size": 1,
                                           "validate#inferer#overlap": 0.0})

    infer = BundleInferTask(str(model_dir), conf={})
    assert infer.is_valid(), "BundleInferTask rejected the bundle"
    assert infer.labels == {"grey_matter": 1, "white_matter": 2}, infer.labels
    assert infer.dimension == 2, infer.dimension
    image = data_dir / datalist["test"][0]["image"]
    label_file, result = infer({"image": str(image), "device": "cpu"})
    pred = np.asarray(nib.load(label_file).dataobj)
    src = nib.load(image)
    assert pred.shape == src.shape, f"label shape {pred.shape} for an image of shape {src.shape}"
    assert pred.dtype == np.uint8, pred.dtype
    assert set(np.unique(pred).tolist()) <= {0, 1, 2}, np.unique(pred)
    print(f"BundleInferTask: {image.name} -> {label_file} shape {pred.shape} {pred.dtype} "
          f"classes {sorted(np.unique(pred).tolist())}")
    if args.photo_bundle:
        check_photo_bundle(Path(args.photo_bundle), work)
    print("MONAI Label check passed")
    return 0


def train_one_epoch(model_dir: Path, datastore, overrides: dict) -> None:
    """One epoch of monailabel's BundleTrainTask on ``datastore``; ``overrides`` go through its
    ``_update_overrides`` hook (smaller crops and batches for a CPU check)."""
    from monailabel.tasks.train.bundle import BundleTrainTask

    class SmallBundleTrainTask(BundleTrainTask):
        def _update_overrides(self, given):
            given.update(overrides)
            return given

    name = model_dir.name
    trainer = SmallBundleTrainTask(str(model_dir), conf={})
    assert trainer.is_valid(), f"BundleTrainTask rejected {name}"
    # "pretrained" is MONAI Label's "start from models/model.pt if present" (there is none yet); with False
    # monailabel 0.8.5 calls os.path.exists(None)
    trainer({"model": name, "max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False,
             "pretrained": True}, datastore)
    model_file = model_dir / "models" / "model.pt"
    assert model_file.is_file(), f"training did not write {model_file}"
    print(f"BundleTrainTask ({name}): trained 1 epoch, wrote {model_file}")


def check_photo_bundle(bundle: Path, work: Path) -> None:
    """A photo bundle (RGB PNG in, label PNG of the input's size out): one training epoch on a PNG datastore
    (synthetic photos with a bright disc as the lesion), then inference on a PNG of another size."""
    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.infer.bundle import BundleInferTask
    from PIL import Image

    name = bundle.name
    model_dir = work / "app" / "model" / name
    shutil.copytree(bundle, model_dir, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    studies = work / "photo_studies"
    (studies / "labels" / "final").mkdir(parents=True)
    rng = np.random.default_rng(0)

    def photo(h: int, w: int):
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2
        rgb = (rng.random((h, w, 3)) * 80 + 40 + 120 * disc[..., None]).astype(np.uint8)
        return rgb, disc.astype(np.uint8)

    for i, (h, w) in enumerate([(120, 160), (140, 130)]):
        rgb, mask = photo(h, w)
        Image.fromarray(rgb).save(studies / f"case{i}.png")
        Image.fromarray(mask).save(studies / "labels" / "final" / f"case{i}.png")  # class indices, as MONAI Label saves
    datastore = LocalDatastore(str(studies), extensions=("*.png",), auto_reload=False)
    assert len(datastore.datalist()) == 2, datastore.datalist()

    # offline: the ImageNet encoder weights are not downloaded ("pretrained" here is the bundle's id)
    train_one_epoch(model_dir, datastore, {"spatial_size": [64, 64], "batch_size": 1, "pretrained": False})

    infer = BundleInferTask(str(model_dir), conf={})
    assert infer.is_valid(), f"BundleInferTask rejected {name}"
    assert infer.dimension == 2, infer.dimension
    rgb, _ = photo(150, 190)
    image = work / "photo_150x190.png"
    Image.fromarray(rgb).save(image)
    for request in ({}, {"result_extension": ".png"}):
        label_file, _ = infer({"image": str(image), "device": "cpu", **request})
        label = np.asarray(Image.open(label_file)) if str(label_file).endswith(".png") else \
            np.asarray(nib.load(label_file).dataobj)
        assert label.shape == rgb.shape[:2], f"{name}: label shape {label.shape} for a {rgb.shape} photo"
        assert label.dtype == np.uint8, label.dtype
        assert set(np.unique(label).tolist()) <= {0, 1}, np.unique(label)
        print(f"BundleInferTask ({name}): {image.name} {rgb.shape} -> {Path(label_file).suffix} {label.shape} "
              f"{label.dtype} classes {sorted(np.unique(label).tolist())}")


if __name__ == "__main__":
    sys.exit(main())
