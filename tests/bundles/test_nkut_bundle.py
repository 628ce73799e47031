"""The NKUT bundle (bundles/medurwkv_nkut) from its folder, as users type the commands, on a miniature CBCT
release with the quirks (tests/data/synthetic_nkut.py): prepare-data, verify-data, one epoch of the 2D
network on axial slices, evaluation per test volume, inference on volumes, one epoch of the 3D variant, and a
missing label map reported as one message."""
from __future__ import annotations

import csv
import importlib.util
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

sys.path.insert(0, str(Path(__file__).parent))
from test_demo_bundle import NO_HUB, bundle_run  # noqa: E402  (the bundle tests' runner)

REPO = Path(__file__).resolve().parents[2]
CPU = ["--device", "$torch.device('cpu')"]
TINY_2D = ["--spatial_size", "[32,32]", *CPU]
TINY_3D = ["--network_def#feature_size", "16", "--network_def#bottleneck_depth", "1",
           "--network_def#decoder_depths", "[1,1,1]", "--spatial_size", "[32,32,16]", *CPU]


def _synthetic():
    """tests/data/synthetic_nkut.py, imported by path (tests/ is not a package)."""
    if "synthetic_nkut" not in sys.modules:
        spec = importlib.util.spec_from_file_location("synthetic_nkut", REPO / "tests" / "data" / "synthetic_nkut.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["synthetic_nkut"]


def _medurwkv(bundle: Path, *args: str, check: bool = True) -> str:
    """``python -m medurwkv_net ARGS`` in the bundle folder; returns stdout + stderr."""
    proc = subprocess.run([sys.executable, "-m", "medurwkv_net", *args], cwd=bundle, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert (proc.returncode == 0) == check, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return _synthetic().make_nkut(tmp_path_factory.mktemp("nkut") / "unpacked")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("bundle") / "medurwkv_nkut"
    shutil.copytree(REPO / "bundles" / "medurwkv_nkut", dst,
                    ignore=shutil.ignore_patterns("models", "eval", "data", "prepared"))
    return dst


@pytest.fixture(scope="module")
def prepared(bundle, release) -> dict:
    out = _medurwkv(bundle, "prepare-data", "nkut", str(release.dataset_dir), "--output", "prepared/datalist.json")
    assert "training: 3 case(s)" in out and "validation: 1 case(s)" in out and "test: 1 volume(s)" in out, out
    return json.loads((bundle / "prepared" / "datalist.json").read_text())


@pytest.fixture(scope="module")
def trained_2d(bundle, release, prepared) -> Path:
    out = bundle_run(bundle, "run", "training", "--config_file", "configs/train.json", "--dataset_dir",
                     str(release.dataset_dir), "--pretrained", "False", "--max_epochs", "1", "--batch_size", "4",
                     *TINY_2D)
    assert "val_mean_dice_wisdom_tooth" in out and "val_mean_dice_alveolar_bone" in out and "test_mean" not in out
    return bundle


def test_verify_data_checks_slices_and_volumes(bundle, release, prepared):
    out = _medurwkv(bundle, "verify-data", "--config_file", "configs/train.json", "--dataset_dir",
                    str(release.dataset_dir))
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[:7] if line.split()[:1] != ["split"]}
    assert rows["test"] == ["1", "0"] and rows["training_volumes"] == ["3", "0"]
    assert rows["training"] == [str(len(prepared["training"])), "0"]  # 2D slices and 3D volumes, each as such
    assert "0 with errors" in out


def test_2d_network_trains_on_slices_and_scores_whole_volumes(trained_2d, release, prepared, tmp_path):
    bundle = trained_2d
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["encoder.patch_embed.projection.weight"].ndim == 4  # the 2D network, one input channel
    bundle_run(bundle, "run", "--config_file", "['configs/train.json','configs/evaluate.json']", "--dataset_dir",
               str(release.dataset_dir), *TINY_2D, env=NO_HUB)
    test_images = sorted(c["image"] for c in prepared["test"])
    for metric in ("test_mean_dice", "test_mean_iou", "test_hd95"):
        rows = list(csv.reader(open(bundle / "eval" / f"{metric}_raw.csv")))
        assert rows[0][1:4] == ["class0", "class1", "class2"] and len(rows[0]) == 5  # 3 classes + mean
        assert sorted(r[0] for r in rows[1:]) == test_images  # one row per test volume

    inputs = tmp_path / "volumes"
    shutil.copytree(release.release_root / "images", inputs)
    bundle_run(bundle, "run", "--config_file", "configs/inference.json", "--input_dir", str(inputs),
               "--output_dir", str(tmp_path / "pred"), *TINY_2D, env=NO_HUB)
    for case, image in release.images.items():  # NIfTI, upper-case NIfTI, NRRD, DICOM series
        pred = nib.load(str(tmp_path / "pred" / f"{case}_seg.nii.gz"))
        assert pred.shape == release.classes[case].shape and pred.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3}
        label = nib.load(str(bundle / "prepared" / "label_volumes" / f"{case}.nii.gz"))
        np.testing.assert_allclose(pred.affine, label.affine, atol=1e-4)  # back in the volume's own geometry


def test_3d_variant_trains_one_epoch(bundle, release, prepared):
    out = bundle_run(bundle, "run", "training", "--config_file", "['configs/train.json','configs/train_3d.json']",
                     "--dataset_dir", str(release.dataset_dir), "--max_epochs", "1", "--num_samples", "1", *TINY_3D)
    assert "val_mean_dice_second_molar" in out
    state = torch.load(bundle / "models" / "3d" / "model.pt", map_location="cpu", weights_only=True)
    assert state["encoder.patch_embed.projection.weight"].ndim == 5 and state["out.weight"].shape[0] == 4


def test_a_missing_label_map_is_one_message(tmp_path):
    rel = _synthetic().make_nkut(tmp_path / "unpacked")
    (rel.release_root / "labels" / "bone" / "NKUT_004_bone.nii.gz").unlink()
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / "medurwkv_nkut", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    out = bundle_run(bundle, "run", "training", "--config_file", "configs/train.json", "--dataset_dir",
                     str(rel.dataset_dir), "--pretrained", "False", *TINY_2D, check=False)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'" + str(rel.images["NKUT_004"]) + "' needs" in errors[0], out[-3000:]
    assert "labels/bone" in errors[0] and "Traceback" not in out
    assert not (bundle / "prepared" / "datalist.json").exists()
