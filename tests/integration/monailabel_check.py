"""MONAI Label's server trains and serves the demo bundle on NIfTI and a photo bundle on PNG over REST (run by
.ci/monailabel_check.sh, in a venv with monailabel).

The monaibundle sample app that the installed monailabel ships (``monailabel apps --download``) gets both
bundles in its ``model/`` folder (copies without data, with weights saved from the untrained network and
train.json shrunk for a CPU epoch: small crops, batch 1, no ImageNet download). ``monailabel start_server``
then serves two projects in turn, as 3D Slicer talks to it through monailabel's own client
(``MONAILabelClient``):

1. the demo project (studies: two MNI152 slices with final labels, one without): ``/info/`` lists both
   models with the classes of their ``channel_def``; ``/activelearning/first`` gives the unlabelled slice;
   ``/train/<demo>`` runs one epoch (JSON body, as Slicer posts it) until ``/train/`` says DONE and
   ``models/model.pt`` was rewritten; ``/infer/<demo>?image=<id>`` returns a NIfTI label of the slice's
   shape, integer dtype, values among ``channel_def``'s;
2. the photo project (studies: two RGB PNG photos with label PNGs, one without): the same with the photo
   bundle, inference returning a PNG label of the photo's height and width, also for PNG and JPG photos
   uploaded with the request instead of taken from the datastore.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from monailabel_projects import channel_classes, demo_studies, file_digest, install_bundle, photo, photo_studies
from monailabel_server import download_app, log_tail, running_server

# train.json ids set in the app's bundle copies so that one epoch takes seconds on CPU
DEMO_TRAIN = {"spatial_size": [64, 64], "num_samples": 1, "batch_size": 1, "validate#inferer#overlap": 0.0}
# "pretrained" here is the bundle's ImageNet encoder switch (offline: no download)
PHOTO_TRAIN = {"spatial_size": [64, 64], "batch_size": 1, "pretrained": False}
# the train request as Slicer posts it ("pretrained": MONAI Label's "start from models/model.pt")
TRAIN_REQUEST = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "pretrained": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="the demo bundle folder (bundles/medurwkv_mni152_tissue)")
    parser.add_argument("--photo-bundle", required=True, help="a photo bundle folder (bundles/medurwkv_kvasir)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--train-timeout", type=float, default=600.0, help="seconds one training may take")
    args = parser.parse_args()
    # a SIGTERM (CI's timeout) ends the check through the servers' cleanup, not around it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{Path(__file__).name}: terminated"))

    for option, folder in (("--bundle", args.bundle), ("--photo-bundle", args.photo_bundle)):
        if not all((Path(folder) / "configs" / f).is_file() for f in ("train.json", "inference.json")):
            sys.exit(f"{option} {folder} is not a bundle folder (configs/train.json and configs/inference.json)")
    if args.workdir and Path(args.workdir).exists() and any(Path(args.workdir).iterdir()):
        sys.exit(f"--workdir {args.workdir} is not empty: give a new or empty folder")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="monailabel_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        check(Path(args.bundle).resolve(), Path(args.photo_bundle).resolve(), work, args.train_timeout)
    except BaseException:
        print(f"MONAI Label server check failed; its files (server logs, app, studies) are in {work}")
        raise
    if not args.workdir:
        shutil.rmtree(work)
    print("MONAI Label server check passed")
    return 0


def check(demo: Path, photo_bundle: Path, work: Path, train_timeout: float) -> None:
    """Both projects in turn, each served by its own ``monailabel start_server``, both bundles in the app."""
    app = download_app(work / "apps")
    models = [demo.name, photo_bundle.name]
    install_bundle(demo, app / "model", DEMO_TRAIN)
    install_bundle(photo_bundle, app / "model", PHOTO_TRAIN)

    to_segment = demo_studies(work / "demo_studies", work / "demo_data")
    with running_server(app, work / "demo_studies", models, work / "server_demo.log") as url:
        client = _client(url, work)
        check_info(client, app, models)
        train(client, app / "model" / demo.name, work / "server_demo.log", train_timeout)
        check_infer_nifti(client, demo, to_segment)

    to_segment = photo_studies(work / "photo_studies")
    with running_server(app, work / "photo_studies", models, work / "server_photo.log") as url:
        client = _client(url, work)
        check_info(client, app, models)
        train(client, app / "model" / photo_bundle.name, work / "server_photo.log", train_timeout)
        check_infer_png(client, photo_bundle, to_segment, work)


def _client(url: str, work: Path):
    from monailabel.client import MONAILabelClient

    tmp = work / "client"
    tmp.mkdir(exist_ok=True)
    return MONAILabelClient(url, tmpdir=str(tmp))


def check_info(client, app: Path, models: list[str]) -> None:
    """``/info/`` lists every bundle as a 2D segmentation model and trainer, with the classes of its
    ``channel_def`` (background left out, as MONAI Label does)."""
    info = client.info()
    for name in models:
        assert name in info["models"], f"/info/ lists the models {sorted(info['models'])}, not {name}"
        assert name in info["trainers"], f"/info/ lists the trainers {sorted(info['trainers'])}, not {name}"
        model = info["models"][name]
        expected = {v: k for k, v in channel_classes(app / "model" / name).items() if v != "background"}
        assert model["labels"] == expected, f"/info/ labels of {name}: {model['labels']}, channel_def: {expected}"
        assert model["dimension"] == 2 and model["type"] == "segmentation", (name, model)
    print(f"/info/: models {sorted(info['models'])}, trainers {sorted(info['trainers'])}")


def train(client, bundle_copy: Path, log: Path, timeout: float) -> None:
    """``/train/<model>`` for one epoch; waits for ``/train/`` to report the task done and checks that the
    bundle copy's ``models/model.pt`` was rewritten."""
    model_file = bundle_copy / "models" / "model.pt"
    before = file_digest(model_file)
    task = client.train_start(bundle_copy.name, dict(TRAIN_REQUEST))
    start = time.monotonic()
    while True:
        status = client.train_status()
        if status.get("id") == task.get("id") and status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        if time.monotonic() - start > timeout:
            client.train_stop()
            raise RuntimeError(f"training {bundle_copy.name} still runs after {timeout:.0f} s\n{log_tail(log)}")
        time.sleep(2.0)
    details = "\n".join(status.get("details", []))
    assert status["status"] == "DONE", f"training {bundle_copy.name}: {status['status']}\n{details}\n{log_tail(log)}"
    assert model_file.is_file() and file_digest(model_file) != before, \
        f"training {bundle_copy.name} ended DONE without rewriting {model_file}\n{details}"
    print(f"/train/{bundle_copy.name}: 1 epoch, DONE in {time.monotonic() - start:.0f} s, rewrote {model_file}")


def next_sample(client) -> str:
    """``/activelearning/first``: the unlabelled image Slicer's "Next Sample" opens."""
    sample = client.next_sample("first", {})
    assert sample.get("id"), f"/activelearning/first returned no image: {sample}"
    return sample["id"]


def check_label(label: np.ndarray, shape: tuple[int, ...], classes: dict[int, str], what: str) -> None:
    """The label of one inference: the input's spatial shape, an integer dtype, classes of ``channel_def``."""
    assert label.shape == shape, f"{what}: label shape {label.shape} for an input of spatial shape {shape}"
    assert np.issubdtype(label.dtype, np.integer), f"{what}: label dtype {label.dtype}, not an integer type"
    values = set(np.unique(label).tolist())
    assert values <= set(classes), f"{what}: label values {sorted(values)}, channel_def {classes}"
    print(f"{what}: label {label.shape} {label.dtype} classes {sorted(values)}")


def check_infer_nifti(client, bundle: Path, to_segment: dict[str, tuple[int, ...]]) -> None:
    """``/infer/<demo>?image=<id>`` on the unlabelled NIfTI slice of the datastore."""
    image_id = next_sample(client)
    assert image_id in to_segment, f"/activelearning/first gave {image_id}, the unlabelled slice is {to_segment}"
    label_file, _ = client.infer(bundle.name, image_id, {})
    assert label_file and str(label_file).endswith((".nii", ".nii.gz")), f"/infer/{bundle.name}: {label_file}"
    label = np.asarray(nib.load(label_file).dataobj)
    check_label(label, to_segment[image_id], channel_classes(bundle), f"/infer/{bundle.name}?image={image_id}")


def check_infer_png(client, bundle: Path, to_segment: dict[str, tuple[int, ...]], work: Path) -> None:
    """``/infer/<photo>`` on the unlabelled PNG photo of the datastore, and on a PNG and a JPG photo uploaded
    with the request (sizes the model has not seen): every label is a PNG (lossless, also for JPG input)."""
    from PIL import Image

    classes = channel_classes(bundle)
    image_id = next_sample(client)
    assert image_id in to_segment, f"/activelearning/first gave {image_id}, the unlabelled photo is {to_segment}"
    requests = [(image_id, None, to_segment[image_id])]
    for i, (h, w, ext) in enumerate([(97, 211, ".png"), (133, 120, ".jpg")]):
        rgb, _ = photo(h, w, np.random.default_rng(i + 1))
        uploaded = work / f"upload_{h}x{w}{ext}"
        Image.fromarray(rgb).save(uploaded)
        requests.append(("", uploaded, rgb.shape))
    for image, file, shape in requests:
        label_file, _ = client.infer(bundle.name, image, {}, file=str(file) if file else None)
        what = f"/infer/{bundle.name}" + (f"?image={image}" if image else f" (upload {file.name})")
        assert label_file and str(label_file).endswith(".png"), f"{what}: {label_file}, not a PNG"
        check_label(np.asarray(Image.open(label_file)), shape[:2], classes, what)


if __name__ == "__main__":
    sys.exit(main())
