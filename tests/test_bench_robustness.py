"""benchmarks/bench_robustness.py: each degradation is what its table column says it is."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_robustness.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_robustness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _phantom() -> np.ndarray:
    zz, yy, xx = np.mgrid[:40, :48, :36]
    vol = np.zeros((40, 48, 36), np.float32)
    vol[((zz - 20) ** 2 + (yy - 24) ** 2 + (xx - 18) ** 2) < 15**2] = 150.0
    return vol


def test_bias_field_spans_forty_percent_over_the_object_and_spares_the_background(bench):
    vol = _phantom()
    out = bench.bias_field(vol, np.random.default_rng(3))
    inside = vol > 0
    ratio = out[inside] / vol[inside]
    assert ratio.min() == pytest.approx(0.8, abs=1e-4) and ratio.max() == pytest.approx(1.2, abs=1e-4)
    assert np.all(out[~inside] == 0)
    other = bench.bias_field(vol, np.random.default_rng(4))
    assert not np.allclose(out, other), "the seed draws the field"


@pytest.mark.parametrize("level", [0.03, 0.05])
def test_rician_noise_has_the_stated_sigma(bench, level):
    vol = _phantom()
    out = bench.rician(vol, np.random.default_rng(0), level)
    sigma = level * 150.0
    background = out[vol == 0]
    assert background.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)  # Rayleigh mean
    assert np.all(out >= 0)
    bright = out[vol > 0]
    assert bright.std() == pytest.approx(sigma, rel=0.1)  # Gaussian-like at high SNR


def test_two_mm_averages_blocks_and_returns_to_the_grid(bench):
    vol = np.zeros((8, 6, 4), np.float32)
    vol[::2, ::2, ::2] = 8.0  # one voxel of eight bright: each 2 mm voxel measures their mean
    out = bench.low_resolution(vol, np.random.default_rng(0))
    assert out.shape == vol.shape
    np.testing.assert_allclose(out, 1.0, atol=1e-5)
    odd = _phantom()[:39, :47, :35]
    assert bench.low_resolution(odd, None).shape == odd.shape
    assert abs(bench.low_resolution(odd, None).mean() - odd.mean()) < 0.02 * odd.mean()


def test_degraded_copy_replaces_only_the_test_images(bench, tmp_path):
    import nibabel as nib

    from medurwkv_net.data import mni152

    data = Path(mni152.prepare(tmp_path / "data")).parent
    out = bench.write_degraded(data, tmp_path / "rician5", "rician5", seed=1)
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist == json.loads((data / "datalist.json").read_text())
    assert mni152.prepare(out) == str(out / "datalist.json")  # still a complete preparation: not rewritten
    for item in datalist["test"]:
        clean, noisy = (nib.load(str(d / item["image"])) for d in (data, out))
        np.testing.assert_array_equal(clean.affine, noisy.affine)
        assert clean.shape == noisy.shape
        assert np.abs(noisy.get_fdata() - clean.get_fdata()).mean() > 1.0
        assert (out / item["label"]).read_bytes() == (data / item["label"]).read_bytes()
    item = datalist["training"][0]
    assert (out / item["image"]).read_bytes() == (data / item["image"]).read_bytes()


def test_result_files_name_the_training_recipe(bench, tmp_path):
    recipe = bench.recipe()
    assert recipe["normalize_transforms"] == ["DivideByLocalMeand", "ScaleIntensityRanged"]
    assert "RandBiasFieldd (p=0.1)" in recipe["random_transforms"]
    clean = {"test_mean_dice": 0.5, "test_mean_dice_grey_matter": 0.4, "test_mean_dice_white_matter": 0.6}
    info = {"bundle": "demo", "device": "cpu", "torch": "x", "threads": 2, "load_average_at_end": (1.0, 1.0, 1.0),
            "recipe": recipe, "results": [{"network": "N", "epochs": 1, "wall_s": 1.0, "scores": {"clean": clean}}]}
    table = bench.write_table(tmp_path / "r", info)
    assert "`normalize_transforms`: DivideByLocalMeand, ScaleIntensityRanged" in table
    assert "**0.500** (0.400 / 0.600)" in table
    assert json.loads((tmp_path / "r.json").read_text())["recipe"] == recipe


def test_config_overrides_are_parsed_and_listed(bench, tmp_path):
    overrides = bench.parse_overrides(["train#normalize_transforms#0#order=1",
                                       "train#normalize_transforms#0#sigma=48.0", "device=cpu"])
    assert overrides == {"train#normalize_transforms#0#order": 1, "train#normalize_transforms#0#sigma": 48.0,
                         "device": "cpu"}
    with pytest.raises(SystemExit, match="ID=VALUE"):
        bench.parse_overrides(["max_epochs"])
    clean = {"test_mean_dice": 0.5, "test_mean_dice_grey_matter": 0.4, "test_mean_dice_white_matter": 0.6}
    info = {"bundle": "demo", "device": "cpu", "torch": "x", "threads": 2, "load_average_at_end": (1.0, 1.0, 1.0),
            "recipe": bench.recipe(), "overrides": overrides,
            "results": [{"network": "N", "epochs": 1, "wall_s": 1.0, "scores": {"clean": clean}}]}
    table = bench.write_table(tmp_path / "r", info)
    assert ("Config overrides: `train#normalize_transforms#0#order=1`, "
            "`train#normalize_transforms#0#sigma=48.0`") in table
