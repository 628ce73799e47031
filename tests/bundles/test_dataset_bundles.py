"""The six photo dataset bundles, end to end on tiny synthetic releases in the exact public layouts:
training for one epoch through ``python -m monai.bundle run training`` (a subprocess, as users run it),
then evaluation and inference through ``monai.bundle.run`` -- the function that command calls -- in
this process, which saves two interpreter starts (MONAI's import alone takes seconds) per bundle."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DATASETS = ["isic2017", "isic2018", "glas", "tdd", "busi", "kvasir"]  # NKUT (CBCT): test_nkut_bundle.py
CONFIG_FILES = ["train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json",
                "logging.conf"]


def _synthetic():
    """tests/data/synthetic_releases.py, imported by path (tests/ is not a package)."""
    if "synthetic_releases" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "synthetic_releases", REPO / "tests" / "data" / "synthetic_releases.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["synthetic_releases"]


# the smallest releases that still give every split a case (BUSI: one per class and split, incl. the
# two-mask case; GlaS: testA and testB)
SMALL = {
    "isic2017": {"counts": {"Training": 3, "Validation": 1, "Test_v2": 1}},
    "isic2018": {"counts": {"Training": 3, "Validation": 1, "Test": 1}},
    "glas": {"counts": {"train": 4, "testA": 1, "testB": 1}},
    "tdd": {"n": 5},
    "busi": {"per_class": 3},
    "kvasir": {"n": 5},
}

# small overrides that keep each run to seconds on a CPU (no Hub access in tests: pretrained False)
FAST = {"pretrained": False, "max_epochs": 1, "spatial_size": [32, 32], "batch_size": 4, "num_overlay_cases": 1,
        "device": "$torch.device('cpu')"}


def _cli(bundle: Path, *args: str, env: dict | None = None, **overrides) -> subprocess.CompletedProcess:
    # spelled as users type them: --pretrained False, --spatial_size [32,32]
    flags = [a for k, v in overrides.items() for a in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args, *flags], cwd=bundle,
                       env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{' '.join(args)}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
    return r


def _inproc(bundle: Path, config_file, **overrides) -> None:
    from monai.bundle import run

    cwd = os.getcwd()
    os.chdir(bundle)
    try:
        run(config_file=config_file, logging_file=str(bundle / "configs" / "logging.conf"), **overrides)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("dataset", DATASETS)
def test_bundle_file_set_and_metadata(dataset):
    b = REPO / "bundles" / f"medurwkv_{dataset}"
    for f in ["LICENSE", "docs/README.md", "docs/data_license.txt"] + [f"configs/{c}" for c in CONFIG_FILES]:
        assert (b / f).is_file(), f"{b / f} missing"
    meta = json.loads((b / "configs/metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"):
        assert meta.get(key), f"{dataset}: metadata.json lacks {key}"
    assert meta["version"] in meta["changelog"]
    train = json.loads((b / "configs/train.json").read_text())
    inp = meta["network_data_format"]["inputs"]["image"]
    out = meta["network_data_format"]["outputs"]["pred"]
    assert inp["num_channels"] == train["in_channels"] == len(inp["channel_def"])
    assert out["num_channels"] == train["out_channels"] == len(out["channel_def"]) == len(train["class_names"])
    assert train["dataset_name"] == dataset and train["pretrained"] is True and train["spatial_size"] == [256, 256]
    from medurwkv_net.data import get_release

    assert train["label_threshold"] == get_release(dataset).label_threshold
    readme = (b / "docs/README.md").read_text()
    assert f"prepare-data {dataset}" in readme and "--pretrained False" in readme and "256x256" in readme


@pytest.mark.parametrize("dataset", DATASETS)
def test_bundle_trains_evaluates_and_infers(tmp_path, dataset):
    rel = _synthetic().make_release(dataset, tmp_path / "unpacked", **SMALL[dataset])
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / f"medurwkv_{dataset}", bundle,
                    ignore=shutil.ignore_patterns("models", "eval", "datalist.json"))
    common = {"bundle_root": str(bundle), "dataset_dir": str(rel.dataset_dir), **FAST}
    # the releases' own image folders, passed to inference as they unpack
    image_folder = {"tdd": rel.release_root / "Radiographs",  # grey .JPG radiographs
                    "isic2017": rel.release_root / "ISIC-2017_Test_v2_Data"}.get(dataset)  # with superpixel maps

    # every augmentation of the domain's chain applied to every training image of the epoch
    _cli(bundle, "training", "--config_file", "configs/train.json", **common, **_always_augment(bundle))
    assert (bundle / "models" / "model.pt").is_file()
    datalist = json.loads((bundle / "datalist.json").read_text())
    assert datalist["dataset"] == dataset
    assert sorted(c["case"] for k in ("training", "validation", "test") for c in datalist[k]) == sorted(rel.masks)

    # evaluation and inference need no Hub: their network is built with pretrained: false (weights: model.pt)
    offline = {k: v for k, v in common.items() if k != "pretrained"}
    _cli(bundle, "--config_file", "['configs/train.json','configs/evaluate.json']", env=_no_hub(tmp_path), **offline)
    test_images = sorted(c["image"] for c in datalist["test"])
    for metric in ("test_mean_dice", "test_mean_iou", "test_hd95"):
        raw = bundle / "eval" / f"{metric}_raw.csv"
        with open(raw) as f:
            rows = list(csv.reader(f))
        assert len(rows) == 1 + len(test_images), raw.read_text()  # header + one row per test case
        assert sorted(r[0] for r in rows[1:]) == test_images
        assert (bundle / "eval" / f"{metric}_summary.csv").is_file()
        values = [float(r[1]) for r in rows[1:]]
        if metric != "test_hd95":
            assert all(0.0 <= v <= 1.0 for v in values if not np.isnan(v)), values
    if dataset == "glas":  # Test A and Test B reported apart, and pooled
        rows = list(csv.DictReader(open(bundle / "eval" / "test_subsets.csv")))
        assert [r["subset"] for r in rows] == ["testA", "testB", "all"]
        assert [int(r["cases"]) for r in rows] == [1, 1, 2]

    # inference on a folder of images writes a PNG mask per image, at the image's original size
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in test_images:
        shutil.copy(image, inputs / Path(image).name)
    _cli(bundle, "--config_file", "configs/inference.json", env=_no_hub(tmp_path), input_dir=str(inputs),
         **{k: v for k, v in offline.items() if k in ("bundle_root", "spatial_size", "device")})
    _check_predictions(bundle / "eval" / "predictions", sorted(str(p) for p in inputs.iterdir()))
    if image_folder is not None:
        _cli(bundle, "--config_file", "configs/inference.json", env=_no_hub(tmp_path), input_dir=str(image_folder),
             output_dir=str(tmp_path / "pred"), bundle_root=str(bundle), spatial_size=[32, 32])
        inputs = sorted(str(p) for p in image_folder.iterdir() if p.suffix.lower() in (".jpg", ".png")
                        and "_superpixels" not in p.name)
        _check_predictions(tmp_path / "pred", inputs)
        written = sorted(os.listdir(tmp_path / "pred"))
        assert len(written) == len(inputs) and not any("superpixels" in n for n in written), written


# the domain's augmentations each photo bundle must train with (issue: robust recipes)
DOMAIN_AUGMENTATIONS = {
    "isic2017": {"medurwkv_net.data.RandColorJitterd", "RandGaussianSmoothd", "medurwkv_net.data.RandJPEGd"},
    "isic2018": {"medurwkv_net.data.RandColorJitterd", "RandGaussianSmoothd", "medurwkv_net.data.RandJPEGd"},
    "kvasir": {"medurwkv_net.data.RandColorJitterd", "RandGaussianSmoothd", "medurwkv_net.data.RandJPEGd"},
    "glas": {"medurwkv_net.data.RandHEStainJitterd", "medurwkv_net.data.RandColorJitterd", "RandGaussianSmoothd"},
    "tdd": {"medurwkv_net.data.RandColorJitterd", "RandAdjustContrastd", "RandGaussianNoised", "RandGaussianSmoothd",
            "medurwkv_net.data.RandJPEGd"},
    "busi": {"medurwkv_net.data.RandSpeckleNoised", "RandAdjustContrastd", "medurwkv_net.data.RandColorJitterd",
             "RandGaussianSmoothd"},
}
GEOMETRIC = {"RandFlipd", "RandRotate90d", "RandZoomd"}


def _random_entries(bundle: Path) -> list[tuple[int, dict]]:
    train = json.loads((bundle / "configs" / "train.json").read_text())
    return [(i, t) for i, t in enumerate(train["train"]["random_transforms"]) if "prob" in t]


def _always_augment(bundle: Path) -> dict:
    """Command-line overrides that set every random transform's probability to 1."""
    return {f"train#random_transforms#{i}#prob": 1.0 for i, _ in _random_entries(bundle)}


def _parser(bundle: Path, config: str = "train.json", **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser.update({"bundle_root": str(bundle), **overrides})
    return parser


@pytest.mark.parametrize("dataset", DATASETS)
def test_training_chain_applies_the_domain_augmentations(tmp_path, dataset):
    """The JSON chain holds the domain's augmentations between the 0..1 image and the normalisation; each one,
    alone at probability 1, changes a miniature case of the release; validation (resize, then normalise) gives
    the tensors of inference.json (normalise, then resize)."""
    import torch

    from medurwkv_net.data import prepare_datalist

    bundle = REPO / "bundles" / f"medurwkv_{dataset}"
    entries = _random_entries(bundle)
    targets = {t["_target_"] for _, t in entries}
    assert DOMAIN_AUGMENTATIONS[dataset] <= targets and targets <= DOMAIN_AUGMENTATIONS[dataset] | GEOMETRIC, targets
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["train"]["preprocessing"]["transforms"] == (
        "$@train#deterministic_transforms + @train#random_transforms + @train#normalize_transforms")
    assert [t["_target_"] for t in train["train"]["normalize_transforms"]] == ["NormalizeIntensityd"]
    assert "NormalizeIntensityd" not in str(train["train"]["deterministic_transforms"])

    rel = _synthetic().make_release(dataset, tmp_path / "unpacked", **SMALL[dataset])
    case = json.loads(Path(prepare_datalist(dataset, str(rel.dataset_dir), str(tmp_path / "d.json"))).read_text())
    case = case["training"][0]
    size = {"spatial_size": [48, 40]}

    def run(probs: dict) -> torch.Tensor:
        parser = _parser(bundle, **size, **{f"train#random_transforms#{i}#prob": probs.get(i, 0.0) for i, _ in entries})
        chain = parser.get_parsed_content("train#preprocessing")
        chain.set_random_state(0)
        out = chain(dict(case))
        assert out["image"].shape == (train["in_channels"], 48, 40) and out["label"].shape == (1, 48, 40)
        assert bool(torch.isfinite(out["image"]).all())
        return torch.as_tensor(out["image"])

    plain = run({})
    for i, t in entries:
        if t["_target_"] not in GEOMETRIC:
            assert not torch.equal(run({i: 1.0}), plain), (dataset, i, t["_target_"])
    if dataset == "busi":  # grey ultrasound stored as RGB stays grey through every augmentation
        from monai.transforms import Compose

        parser = _parser(bundle, **size, **{f"train#random_transforms#{i}#prob": 1.0 for i, _ in entries})
        loaded = Compose(parser.get_parsed_content("train#deterministic_transforms"))(dict(case))
        loaded["image"] = loaded["image"][:1].repeat(3, 1, 1)  # a grey image, as EnsureChannelsd reads one
        grey = Compose(parser.get_parsed_content("train#random_transforms"))(loaded)["image"]
        assert not torch.equal(grey, loaded["image"])
        assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])

    validation = _parser(bundle, **size).get_parsed_content("validate#preprocessing")(dict(case))["image"]
    torch.testing.assert_close(torch.as_tensor(validation), plain)  # validation = training without augmentation
    inference = _parser(bundle, "inference.json", **size).get_parsed_content("preprocessing")
    torch.testing.assert_close(torch.as_tensor(inference({"image": case["image"]})["image"]),
                               torch.as_tensor(validation), atol=1e-5, rtol=0)


def test_augmentation_probabilities_and_ranges_are_config_ids():
    """What `--train#random_transforms#N#<arg> ...` on the command line sets (monai.bundle.run updates the
    parser with the overrides the same way)."""
    bundle = REPO / "bundles" / "medurwkv_glas"
    stain = next(i for i, t in _random_entries(bundle) if t["_target_"].endswith("RandHEStainJitterd"))
    parser = _parser(bundle, **{f"train#random_transforms#{stain}#prob": 0.25,
                                f"train#random_transforms#{stain}#alpha": [0.8, 1.2],
                                f"train#random_transforms#{stain}#beta": 0.1})
    t = parser.get_parsed_content(f"train#random_transforms#{stain}")
    assert type(t).__name__ == "RandHEStainJitterd" and t.prob == 0.25
    assert t.alpha_range == (0.8, 1.2) and t.beta_range == (-0.1, 0.1)
    bad = _parser(bundle, **{f"train#random_transforms#{stain}#alpha": [1.2, 0.8]})
    with pytest.raises(Exception) as e:  # MONAI names the component; the cause names the argument
        bad.get_parsed_content(f"train#random_transforms#{stain}")
    assert "RandHEStainJitterd: alpha range [1.2, 0.8] has low > high" in str(e.value.__cause__)


def _no_hub(tmp_path: Path) -> dict:
    """Environment of a machine without the Hub: offline, and an empty cache."""
    cache = tmp_path / "empty_hf_home"
    cache.mkdir(exist_ok=True)
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub"),
            "HF_ENDPOINT": "http://127.0.0.1:9"}


def _check_predictions(out_dir: Path, images) -> None:
    for image in images:
        out = out_dir / f"{Path(image).stem}_seg.png"
        assert out.is_file(), f"{out} missing; have {sorted(os.listdir(out_dir))}"
        with Image.open(out) as m, Image.open(image) as im:
            assert m.size == im.size  # original size restored
            assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}


@pytest.mark.parametrize("dataset", ["tdd", "kvasir"])  # 1 and 3 input channels; the others match kvasir's network
def test_verify_net_in_out(dataset):
    from monai.bundle import verify_net_in_out

    b = REPO / "bundles" / f"medurwkv_{dataset}"
    cwd = os.getcwd()
    os.chdir(b)
    try:  # builds network_def from inference.json and runs it on the metadata's input shape (256x256)
        verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json", config_file="configs/inference.json",
                          device="cpu", n=1, any=1)
    finally:
        os.chdir(cwd)


def test_default_paper_recipe_loads_hub_encoder_and_keeps_it_frozen(tmp_path, vrwkv_t_checkpoint, hf_offline_cache):
    """Default config (pretrained: true, encoder frozen for 5 epochs): the VRWKV-T checkpoint comes from
    the Hub cache (the official file layout, random weights), and after one epoch of AdamW the saved
    model still holds exactly those encoder weights (any update would change them)."""
    import torch

    ckpt = vrwkv_t_checkpoint
    hf_offline_cache("OpenGVLab/Vision-RWKV", {"vrwkv_t_in1k_224.pth": ckpt})
    rel = _synthetic().make_release("isic2018", tmp_path / "unpacked", **SMALL["isic2018"])
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / "medurwkv_isic2018", bundle)
    overrides = {k: v for k, v in FAST.items() if k != "pretrained"}
    _inproc(bundle, "configs/train.json", bundle_root=str(bundle), dataset_dir=str(rel.dataset_dir), **overrides)

    saved = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    reference = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    backbone = {k[len("backbone."):]: v for k, v in reference.items() if k.startswith("backbone.")}
    assert backbone and all(f"encoder.{k}" in saved for k in backbone)
    for k, v in backbone.items():
        torch.testing.assert_close(saved[f"encoder.{k}"], v, rtol=0, atol=0, msg=k)


def test_bundles_are_the_template_plus_dataset_facts():
    """The committed dataset bundles are exactly what tools/write_bundles.py writes from the demo bundle
    (the template) and the dataset facts: a template change must be carried into all six."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("write_bundles", REPO / "tools" / "write_bundles.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    stale = tool.write_bundles(REPO / "bundles", check=True)
    assert not stale, "regenerate with `python tools/write_bundles.py`; stale: " + ", ".join(stale)
