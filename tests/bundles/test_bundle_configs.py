"""Every bundle's configs as the MONAI model zoo writes them, checked without any dataset on disk.

- the transform chains are MONAI transforms listed in the JSON, and command-line overrides change them;
- reading a config and resolving its data ids writes nothing (data preparation is an explicit step);
- inference builds its network from literals, without the training data or the Hub;
- the zoo's submission checks: necessary and preferred files, version and changelog, the inference
  workflow's properties, ``verify_net_in_out``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import set_determinism

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
PHOTO = ["medurwkv_busi", "medurwkv_glas", "medurwkv_isic2017", "medurwkv_isic2018", "medurwkv_kvasir",
         "medurwkv_tdd"]
NO_HUB = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
# the demo's MRI augmentations, in chain order (bias field, gamma, low resolution, blur, noise)
MRI_AUGMENTATIONS = ["RandBiasFieldd", "RandAdjustContrastd", "RandSimulateLowResolutiond", "RandGaussianSmoothd",
                     "RandGaussianNoised"]
DEMO = "medurwkv_mni152_tissue"


def test_all_bundles_are_checked():
    assert len(BUNDLES) == 10 and set(PHOTO) < set(BUNDLES)


@pytest.mark.parametrize("name", BUNDLES)
def test_transforms_are_declared_monai_classes(name):
    for config in ("train.json", "inference.json"):
        text = (REPO / "bundles" / name / "configs" / config).read_text()
        assert text.count('"_target_": "LoadImaged"') >= 1, (name, config)
        assert "medurwkv_net.bundle.train_transforms" not in text and "inference_transforms" not in text
    train = json.loads((REPO / "bundles" / name / "configs" / "train.json").read_text())
    chains = ("deterministic_transforms", "random_transforms", "normalize_transforms")
    targets = [t["_target_"] for c in chains for t in train["train"].get(c, [])]
    own = [t for t in targets if "." in t]
    # project transforms only where MONAI has none: channel conversion, the releases' mask files, the
    # photo bundles' colour, stain, JPEG and speckle augmentations and the demo's bias-field normalisation
    augment = {f"medurwkv_net.data.{n}" for n in ("RandColorJitterd", "RandHEStainJitterd", "RandJPEGd",
                                                  "RandSpeckleNoised")}
    allowed = {"medurwkv_net.data.EnsureChannelsd", "medurwkv_net.data.LoadMaskd"}
    allowed |= augment if name in PHOTO else {"medurwkv_net.data.DivideByLocalMeand"} if name == DEMO else set()
    assert set(own) <= allowed, own
    if name in PHOTO or name == DEMO:  # augmented, normalised after: validation takes both chains, as copies
        assert train["validate"]["deterministic_transforms"] == "%train#deterministic_transforms"
        assert train["validate"]["normalize_transforms"] == "%train#normalize_transforms"
        assert train["validate"]["preprocessing"]["transforms"] == (
            "$@validate#deterministic_transforms + @validate#normalize_transforms")
    else:
        assert train["validate"]["preprocessing"]["transforms"] == "%train#deterministic_transforms"
    assert "test" not in train  # training never scores the test split


@pytest.mark.parametrize("name", BUNDLES)
def test_train_handlers_are_config_dicts(tmp_path, name):
    """MONAI Label's trainer reads ``t.get("_target_")`` of every train#handlers entry when the bundle has
    ``models/model.pt`` (to add its CheckpointLoader): a reference string there fails every training after
    the first. The lock handler follows ``run_lock``'s settings."""
    train = json.loads((REPO / "bundles" / name / "configs" / "train.json").read_text())
    handlers = train["train"]["handlers"]
    assert [h for h in handlers if not (isinstance(h, dict) and "_target_" in h)] == [], name
    locks = [i for i, h in enumerate(handlers) if h["_target_"] == "medurwkv_net.reliability.RunLock"]
    if "run_lock" not in train:
        assert locks == [], name
        return
    assert locks == [0], name  # first: a second training of the same folder stops before the others attach
    parser = ConfigParser(train)
    parser["bundle_root"] = str(tmp_path)
    parser["run_lock#enabled"] = False
    lock = parser.get_parsed_content("train#handlers#0")
    assert lock.folder == tmp_path / "models" and lock.enabled is False, (name, lock.folder, lock.enabled)


@pytest.mark.parametrize("name", BUNDLES)
def test_monai_label_writes_photo_labels_as_png(name):
    """MONAI Label's monaibundle app adds inference.json's ``displayable_configs`` to each inference request;
    without ``result_extension`` it writes the label in the input's format, and a JPG label is lossy. The
    volume bundles keep the input's format (NIfTI)."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "inference.json"))
    options = parser.get_parsed_content("displayable_configs") if "displayable_configs" in parser else {}
    assert options == ({"result_extension": ".png"} if name in PHOTO else {}), (name, options)


def _workflow(bundle: Path, config, workflow_type: str = "train", **override) -> ConfigWorkflow:
    return ConfigWorkflow(config_file=config, workflow_type=workflow_type, **override)


def test_command_line_overrides_change_the_training_chain(tmp_path):
    bundle = REPO / "bundles" / "medurwkv_mni152_tissue"
    train = str(bundle / "configs" / "train.json")
    default = _workflow(bundle, train).parser.get_parsed_content("train#preprocessing")
    names = [type(t).__name__ for t in default.transforms]
    assert names[:4] == ["LoadImaged", "EnsureChannelFirstd", "ScaleIntensityd", "EnsureTyped"]
    assert names[4:] == ["SpatialPadd", "RandSpatialCropSamplesd", "RandFlipd", *MRI_AUGMENTATIONS, "EnsureTyped",
                         "DivideByLocalMeand", "ScaleIntensityRanged"]
    assert default.transforms[6].prob == 0.5 and default.transforms[7].prob == 0.1
    assert default.transforms[-2].transform.sigma == [24.0]

    # what `python -m monai.bundle run training --config_file configs/train.json --train#...` passes on
    changed = _workflow(bundle, train, **{"train#random_transforms#2#prob": 0.2,
                                         "train#random_transforms#3#prob": 0.9,
                                         "train#random_transforms#3#coeff_range": [-0.2, 0.2],
                                         "train#normalize_transforms#0#sigma": 48.0,
                                         "train#normalize_transforms#0#order": 1})
    chain = changed.parser.get_parsed_content("train#preprocessing")
    assert chain.transforms[6].prob == 0.2
    assert chain.transforms[7].prob == 0.9 and tuple(chain.transforms[7].rand_bias_field.coeff_range) == (-0.2, 0.2)
    assert chain.transforms[-2].transform.sigma == [48.0] and chain.transforms[-2].transform.order == 1
    assert default.transforms[-2].transform.order == 0
    no_aug = _workflow(bundle, train, **{"train#preprocessing#transforms": "$@train#deterministic_transforms"})
    assert [type(t).__name__ for t in no_aug.parser.get_parsed_content("train#preprocessing").transforms] == names[:4]

    # and through the real command line: a 0-probability flip leaves every training crop unflipped
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "print_chain", "--config_file", "configs/train.json",
         "--print_chain", "$print([type(t).__name__ for t in @train#preprocessing.transforms])",
         "--initialize", "[]", "--train#preprocessing#transforms", "$@train#deterministic_transforms[:2]"],
        cwd=bundle, capture_output=True, text=True, timeout=300, env={**os.environ, **NO_HUB})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "['LoadImaged', 'EnsureChannelFirstd']" in proc.stdout


def test_demo_chain_simulates_what_real_mr_images_do(tmp_path):
    """Each MRI augmentation of the demo, forced on (probability 1 from an override), changes the image and
    never the label, and the chain hands the network the image divided by its local mean, mapped to [0, 1],
    as evaluation and inference do."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :44]
    img = (100 + 80 * ((yy - 20) ** 2 + (xx - 22) ** 2 < 150) + rng.random((40, 44)) * 20).astype(np.float32)
    lab = rng.integers(0, 3, (40, 44)).astype(np.uint8)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "lab.nii.gz")
    item = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    bundle = REPO / "bundles" / "medurwkv_mni152_tissue"
    train = json.loads((bundle / "configs" / "train.json").read_text())
    random_ids = [t["_target_"] for t in train["train"]["random_transforms"]]
    off = {f"train#random_transforms#{i}#prob": 0.0 for i, t in enumerate(random_ids) if t.startswith("Rand")
           and t not in ("RandSpatialCropSamplesd",)}

    def run(**override):
        parser = ConfigParser(json.loads(json.dumps(train)))
        parser["spatial_size"] = [40, 44]
        for k, v in {**off, **override}.items():
            parser[k] = v
        set_determinism(seed=0)
        out = parser.get_parsed_content("train#preprocessing")(dict(item))[0]
        set_determinism(None)
        return torch.as_tensor(out["image"]), torch.as_tensor(out["label"])

    base_img, base_lab = run()
    assert float(base_img.min()) >= 0.0 and 0.4 < float(base_img.max()) <= 1.0  # ratio 1 -> 0.5
    for name in MRI_AUGMENTATIONS:
        i = random_ids.index(name)
        image, label = run(**{f"train#random_transforms#{i}#prob": 1.0})
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0, name
        assert (image - base_img).abs().max() > 1e-3, f"{name} at probability 1 left the image unchanged"
        assert torch.equal(label, base_lab), f"{name} changed the label"


def test_demo_normalises_alike_in_training_validation_and_inference(tmp_path):
    """The bias-field normalisation is one chain (``train#normalize_transforms``) that validation, evaluation
    and inference apply as training does: the same slice gives the same network input in all of them, and
    that input is not the plain [0, 1] rescaled slice."""
    import nibabel as nib

    yy, xx = np.mgrid[:96, :112]
    disc = ((yy - 48) ** 2 + (xx - 56) ** 2 < 40**2).astype(np.float32)
    img = disc * (60 + 40 * (np.sin(xx / 4.0) > 0)) * (0.8 + 0.4 * yy / 96)  # two tissues under a field
    nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(disc.astype(np.uint8), np.eye(4)), tmp_path / "lab.nii.gz")
    item = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    configs = REPO / "bundles" / DEMO / "configs"
    images = {}
    for name, files, key in [("validate", ["train.json"], "validate#preprocessing"),
                             ("evaluate", ["train.json", "evaluate.json"], "validate#preprocessing"),
                             ("inference", ["inference.json"], "preprocessing")]:
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        data = dict(item) if name != "inference" else {"image": item["image"]}
        images[name] = torch.as_tensor(parser.get_parsed_content(key)(data)["image"])
    torch.testing.assert_close(images["evaluate"], images["validate"])
    torch.testing.assert_close(images["inference"], images["validate"])
    rescaled = torch.as_tensor(img / img.max())[None]
    assert (images["validate"] - rescaled).abs().max() > 0.05


@pytest.mark.parametrize("name", BUNDLES)
def test_reading_configs_writes_nothing(tmp_path, name):
    bundle = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, bundle)
    before = sorted(p for p in bundle.rglob("*"))
    configs = [["train.json"], ["train.json", "evaluate.json"], ["inference.json"]]
    for files in configs:
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / f) for f in files])
        parser["bundle_root"] = str(bundle)
        parser.parse()
        for key in ("dataset_dir", "datalist_file", "input_dir", "in_channels", "out_channels"):
            if key in parser:
                parser.get_parsed_content(key)
        assert isinstance(parser.get_parsed_content("out_channels"), int)
        if "inference.json" in files:
            net = parser.get_parsed_content("network_def")  # literal channels, no dataset, no Hub
            assert net.out_channels == parser.get_parsed_content("out_channels")
    assert sorted(p for p in bundle.rglob("*")) == before


@pytest.mark.parametrize("name", BUNDLES)
def test_evaluation_and_inference_build_the_network_without_imagenet_weights(name):
    for files in (["train.json", "evaluate.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([str(REPO / "bundles" / name / "configs" / f) for f in files])
        network_def = parser.get("network_def")
        assert network_def.get("pretrained") is False, (name, files)


@pytest.mark.parametrize("name", BUNDLES)
def test_model_zoo_submission_checks(tmp_path, name):
    """The checks of the model zoo's bundle verification, written for this repository."""
    bundle = REPO / "bundles" / name
    for necessary in ("configs/metadata.json", "LICENSE"):
        assert (bundle / necessary).is_file(), necessary
    assert (bundle / "configs" / "inference.json").is_file()  # preferred; models/model.pt: see the model card
    assert "ships without trained weights" in (bundle / "docs" / "README.md").read_text() or name.startswith(
        "medurwkv_mni152") or name == "medurwkv_msd"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    for key in ("monai_version", "pytorch_version", "numpy_version", "name", "task", "description", "authors",
                "copyright", "network_data_format"):
        assert key in meta, key
    # the inference workflow has every property MONAI's bundle workflows (and so MONAI Label) rely on
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"),
                              meta_file=str(bundle / "configs" / "metadata.json"),
                              logging_file=str(bundle / "configs" / "logging.conf"), workflow_type="infer")
    workflow.initialize()
    assert not workflow.check_properties(), workflow.check_properties()
    readme = (bundle / "docs" / "README.md").read_text()
    for section in ("Model Overview", "Data", "Preprocessing", "Training configuration", "Input/Output",
                    "Performance", "MONAI Bundle Commands", "References", "License"):
        assert f"## {section}" in readme, (name, section)


@pytest.mark.parametrize("name", [b for b in BUNDLES if b not in PHOTO])
def test_verify_net_in_out_without_data(tmp_path, name):
    """The photo bundles' twin is in test_dataset_bundles.py; here the NIfTI bundles, 3D ones included."""
    bundle = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "eval", "data"))
    extra = []
    if "3d" in name or name == "medurwkv_msd":  # a smaller 3D network and input keep this to seconds
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = [32, 32, 32]
        meta["network_data_format"]["outputs"]["pred"]["spatial_shape"] = [32, 32, 32]
        (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
        extra = ["--network_def#feature_size", "16", "--network_def#img_size", "32"]
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
         "configs/metadata.json", "--config_file", "configs/inference.json", *extra],
        cwd=bundle, capture_output=True, text=True, timeout=600, env={**os.environ, **NO_HUB})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not (bundle / "data").exists()
