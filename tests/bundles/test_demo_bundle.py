"""The demo bundle (bundles/medurwkv_mni152_tissue) end to end, shrunk to seconds.

Data preparation from the nilearn template, then ``python -m monai.bundle run training`` from the bundle
folder (1 epoch, 2 training slices, 64x64 crops), evaluation (per-case CSV + summary), inference
(masks in the input's format and size), ``verify_net_in_out`` and ``ckpt_export`` (TorchScript).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medurwkv_net.data import mni152

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "medurwkv_mni152_tissue"

# keep every run tiny: 2 training slices, 1 validation slice, 2 test slices, 64x64 crops
TINY = [
    "--max_epochs", "1",
    "--spatial_size", "[64,64]",
    "--num_samples", "1",
    "--batch_size", "2",
    "--train#dataset#data", "$monai.data.load_decathlon_datalist(@datalist_file, True, 'training')[::30]",
    "--validate#dataset#data", "$monai.data.load_decathlon_datalist(@datalist_file, True, 'validation')[:1]",
    "--validate#inferer#overlap", "0.0",
]


# a machine without the Hub: evaluation and inference must not need it (their network is pretrained: false)
NO_HUB = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": os.devnull + "/no-hf-home",
          "HF_HUB_CACHE": os.devnull + "/no-hf-cache"}


def bundle_run(bundle: Path, *args: str, timeout: int = 600, env: dict | None = None, check: bool = True) -> str:
    """``python -m monai.bundle ARGS`` with the bundle folder as working directory; returns stdout+stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=bundle, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"monai.bundle {' '.join(args[:3])} failed:\n{out[-6000:]}"
    else:
        assert proc.returncode != 0, f"monai.bundle {' '.join(args[:3])} should have failed:\n{out[-3000:]}"
    return out


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mni152")
    mni152.prepare(root)
    return root


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("bundle") / "medurwkv_mni152_tissue"
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    return dst


@pytest.fixture(scope="module")
def trained(bundle_copy, dataset_dir) -> tuple[Path, str]:
    out = bundle_run(bundle_copy, "run", "training", "--config_file", "configs/train.json",
                     "--dataset_dir", str(dataset_dir), *TINY)
    return bundle_copy, out


def test_bundle_file_set_and_metadata():
    for rel in ("LICENSE", "configs/metadata.json", "configs/train.json", "configs/evaluate.json",
                "configs/inference.json", "configs/multi_gpu_train.json", "configs/logging.conf",
                "docs/README.md", "docs/data_license.txt"):
        assert (BUNDLE / rel).is_file(), rel
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"):
        assert meta.get(key), key
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image"] and list(fmt["outputs"]) == ["pred"]
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "grey_matter", "2": "white_matter"}
    train = json.loads((BUNDLE / "configs/train.json").read_text())
    assert fmt["outputs"]["pred"]["num_channels"] == train["out_channels"] == len(train["class_names"])
    for key in ("bundle_root", "dataset_dir", "ckpt_dir", "device", "network_def", "network", "initialize", "run"):
        assert key in train, key
    assert isinstance(train["train"]["handlers"], list)  # MONAI Label inserts into this list
    # data preparation runs when the datasets read their data, never in `initialize`: MONAI Label replaces the
    # datasets' data with its datastore and runs `initialize`, without the bundle's own data
    assert "prepare" not in str(train["initialize"]) and "prepare" not in str(train["datalist_file"])
    assert "(@prepare_data, @datalist_file)[1]" in train["verified_datalist"]
    infer = json.loads((BUNDLE / "configs/inference.json").read_text())
    for key in ("network_def", "preprocessing", "postprocessing", "inferer", "evaluator"):
        assert key in infer, key
    # configs hold no machine-specific paths
    for cfg in (BUNDLE / "configs").glob("*.json"):
        assert "/work/" not in cfg.read_text() and "/tmp/" not in cfg.read_text(), cfg


def test_prepare_is_idempotent_with_disjoint_gapped_splits(dataset_dir):
    datalist_file = Path(mni152.prepare(dataset_dir))
    stamp = datalist_file.stat().st_mtime_ns
    assert mni152.prepare(dataset_dir) == str(datalist_file)
    assert datalist_file.stat().st_mtime_ns == stamp  # nothing rewritten
    datalist = json.loads(datalist_file.read_text())
    z = {k: np.array([e["slice"] for e in datalist[k]]) for k in ("training", "validation", "test")}
    assert len(z["training"]) >= 40 and len(z["validation"]) >= 8 and len(z["test"]) >= 8
    for a, b in (("training", "validation"), ("training", "test"), ("validation", "test")):
        assert np.abs(z[a][:, None] - z[b][None, :]).min() > mni152.GAP, (a, b)
    # the datalist is split_slices' split (the layout itself is tested in tests/data/test_mni152_split.py):
    # every held-out slice has training slices both below and above it
    _, p_gm, p_wm, _ = mni152.load_template()
    assert {k: v.tolist() for k, v in z.items()} == mni152.split_slices(mni152.make_labels(p_gm, p_wm))
    for k in ("validation", "test"):
        assert z["training"].min() < z[k].min() and z[k].max() < z["training"].max(), k
    lab = nib.load(dataset_dir / datalist["test"][0]["label"])
    img = nib.load(dataset_dir / datalist["test"][0]["image"])
    assert lab.shape == img.shape == (197, 233)
    assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1, 2}
    # a damaged preparation is detected and redone
    (dataset_dir / datalist["validation"][0]["label"]).unlink()
    mni152.prepare(dataset_dir)
    assert (dataset_dir / datalist["validation"][0]["label"]).is_file()
    # a folder prepared with another split layout (older version) is rewritten
    stale = {**datalist, "preparation": {**datalist["preparation"], "version": 1}}
    datalist_file.write_text(json.dumps(stale))
    mni152.prepare(dataset_dir)
    assert json.loads(datalist_file.read_text())["preparation"] == datalist["preparation"]


def test_labels_follow_threshold():
    gm = np.array([0.6, 0.3, 0.45, 0.2], np.float32)
    wm = np.array([0.3, 0.6, 0.45, 0.1], np.float32)
    np.testing.assert_array_equal(mni152.make_labels(gm, wm, 0.5), [1, 2, 0, 0])
    np.testing.assert_array_equal(mni152.make_labels(gm, wm, 0.4), [1, 2, 1, 0])


def test_training_writes_model_reports_and_curves(trained):
    bundle, out = trained
    assert "val_mean_dice_grey_matter" in out and "val_mean_dice_white_matter" in out
    assert "test_mean_dice" not in out
    assert "train: [1/1] 100%" in out  # the progress bar
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    import medurwkv_net

    net = medurwkv_net.MedURWKV(spatial_dims=2, in_channels=1, out_channels=3, img_size=224)
    net.load_state_dict(state)  # strict: a plain MedURWKV state dict
    assert (bundle / "eval" / "curves.png").stat().st_size > 1000
    assert not (bundle / "eval" / "test_predictions.png").exists()  # training never reads the test split
    assert list((bundle / "eval").glob("events.out.tfevents.*"))
    curves = json.loads((bundle / "eval" / "curves.json").read_text())
    assert curves["train"]["train_loss"][0] == [1]
    assert "val_mean_dice_white_matter" in curves["validation"]


def test_evaluation_writes_per_case_csv_and_summary(trained, dataset_dir):
    bundle, _ = trained
    bundle_run(bundle, "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
               "--dataset_dir", str(dataset_dir), "--spatial_size", "[64,64]",
               "--validate#inferer#overlap", "0.0",
               "--validate#dataset#data", "$monai.data.load_decathlon_datalist(@datalist_file, True, 'test')[::6]",
               env=NO_HUB)
    n_test = len(json.loads((dataset_dir / "datalist.json").read_text())["test"][::6])
    for metric in ("test_mean_dice", "test_mean_iou", "test_hd95"):
        with open(bundle / "eval" / f"{metric}_raw.csv") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        assert len(rows) == 1 + n_test, metric
        assert "mni152_z" in rows[1][0]
        summary = (bundle / "eval" / f"{metric}_summary.csv").read_text()
        assert "mean" in summary and "90percentile" in summary
    assert (bundle / "eval" / "evaluation_predictions.png").is_file()


def test_inference_writes_nifti_masks_of_input_size(trained, dataset_dir, tmp_path):
    bundle, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    test = json.loads((dataset_dir / "datalist.json").read_text())["test"][:1]
    for item in test:
        shutil.copy(dataset_dir / item["image"], inputs)
    bundle_run(bundle, "run", "--config_file", "configs/inference.json", "--input_dir", str(inputs),
               "--output_dir", str(tmp_path / "out"), "--spatial_size", "[64,64]", "--inferer#overlap", "0.0",
               env=NO_HUB)
    for item in test:
        src = nib.load(dataset_dir / item["image"])
        name = Path(item["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        mask = nib.load(tmp_path / "out" / name)
        assert mask.shape == src.shape
        np.testing.assert_allclose(mask.affine, src.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


def test_verify_net_in_out_and_torchscript_export_match_eager(bundle_copy, tmp_path):
    import medurwkv_net

    net = medurwkv_net.MedURWKV(spatial_dims=2, in_channels=1, out_channels=3, img_size=224).eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    bundle_run(bundle_copy, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
               "--config_file", "configs/inference.json")
    ts = tmp_path / "model.ts"
    bundle_run(bundle_copy, "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(ckpt),
               "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
               "--use_trace", "True", "--input_shape", "[1, 1, 32, 32]")
    exported = torch.jit.load(str(ts), map_location="cpu")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), atol=1e-4, rtol=1e-4)


def test_a_datalist_of_ones_own_is_the_one_read(dataset_dir, tmp_path):
    """`--datalist_file own.json` is the file read, whether preparation still runs (the demo prepares its own
    datalist elsewhere) or is turned off with `--prepare_data False`."""
    from monai.bundle import ConfigParser

    own = json.loads(Path(mni152.prepare(dataset_dir)).read_text())
    own["training"], own["validation"] = own["training"][:2], own["validation"][:1]
    for split in ("training", "validation", "test"):  # own.json lives elsewhere: absolute paths
        own[split] = [{k: str(dataset_dir / v) for k, v in case.items() if k in ("image", "label")}
                      for case in own[split]]
    own_file = tmp_path / "own.json"
    own_file.write_text(json.dumps(own))
    for prepare in (True, False):
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / "train.json"))
        parser["dataset_dir"] = str(dataset_dir)
        parser["datalist_file"] = str(own_file)
        if not prepare:
            parser["prepare_data"] = False
        assert parser.get_parsed_content("verified_datalist") == str(own_file)
        assert len(parser.get_parsed_content("train#dataset#data")) == 2
