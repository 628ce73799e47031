"""Evaluation scores predictions in the original image space, not on the network's resized grid.

A photo bundle resizes every image to ``spatial_size`` for the network; its ``evaluate.json`` must
resize the prediction back (``Invertd``) and compare it with the mask as it is stored. The check: a
known network (a 1x1 convolution: foreground where the normalised image is bright), the bundle's
evaluation on a synthetic Kvasir-SEG release whose images are not of the network size, and Dice
computed by hand with plain torch on the original masks.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SIZE = [24, 24]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _synthetic():
    path = REPO / "tests" / "data" / "synthetic_releases.py"
    spec = importlib.util.spec_from_file_location("synthetic_releases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _known_network() -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, :, 0, 0] = 1.0 / 3.0  # foreground logit: mean of the normalised channels
    return conv


def _by_hand(net: torch.nn.Module, image_file: str, mask_file: str) -> tuple[float, float]:
    """(Dice in the original space, Dice on the network grid) with plain torch and PIL.

    MONAI's PIL reader puts the image width first, so arrays are transposed to (C, W, H) here too."""
    rgb = np.asarray(Image.open(image_file).convert("RGB"), dtype=np.float32)
    x = torch.from_numpy(rgb).permute(2, 1, 0) / 255.0
    x = (x - MEAN) / STD
    mask = np.asarray(Image.open(mask_file).convert("RGB")).max(-1) > 127  # JPEG masks: any channel > 127
    truth = torch.from_numpy(mask.T.copy())
    small = F.interpolate(x[None], size=SIZE, mode="bilinear")
    with torch.no_grad():
        prob = torch.softmax(net(small), 1)
    original = F.interpolate(prob, size=tuple(truth.shape), mode="bilinear")[0].argmax(0).bool()
    grid = prob[0].argmax(0).bool()
    truth_grid = F.interpolate(truth[None, None].float(), size=SIZE, mode="nearest")[0, 0].bool()

    def dice(p, g):
        return float(2 * (p & g).sum() / (p.sum() + g.sum()))

    return dice(original, truth), dice(grid, truth_grid)


def test_evaluation_dice_is_computed_on_the_original_masks(tmp_path):
    rel = _synthetic().make_release("kvasir", tmp_path / "unpacked", n=6)
    assert all(tuple(s) != tuple(SIZE) for s in rel.sizes.values())
    bundle = tmp_path / "medurwkv_kvasir"
    shutil.copytree(REPO / "bundles" / "medurwkv_kvasir", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    net = _known_network()
    (bundle / "models").mkdir()
    torch.save(net.state_dict(), bundle / "models" / "model.pt")

    from monai.bundle import run

    cwd = os.getcwd()
    os.chdir(bundle)
    try:
        run(config_file=["configs/train.json", "configs/evaluate.json"],
            logging_file=str(bundle / "configs" / "logging.conf"), bundle_root=str(bundle),
            dataset_dir=str(rel.dataset_dir), spatial_size=SIZE, num_overlay_cases=1,
            device="$torch.device('cpu')",
            network_def={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": 1})
    finally:
        os.chdir(cwd)

    test = json.loads((bundle / "datalist.json").read_text())["test"]
    with open(bundle / "eval" / "test_mean_dice_raw.csv") as f:
        reported = {row[0]: float(row[1]) for row in list(csv.reader(f))[1:]}
    assert sorted(reported) == sorted(c["image"] for c in test)
    grid_differs = False
    for case in test:
        original, grid = _by_hand(net, case["image"], case["label"])
        assert 0.3 < original < 1.0
        assert abs(reported[case["image"]] - original) < 1e-5, (case["image"], reported[case["image"]], original)
        grid_differs |= abs(grid - original) > 1e-3
    assert grid_differs, "the network-grid Dice equals the original-space Dice on every case: the test cannot tell"
