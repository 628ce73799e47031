"""A non-finite loss stops training at once, names epoch, iteration and causes, and saves no NaN model."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ._subprocess import launch
from .test_exact_resume import make_data

SCRIPT = Path(__file__).with_name("bundle_train.py")


def test_learning_rate_far_too_high_stops_at_the_first_nan_loss(tmp_path):
    data = make_data(tmp_path / "data")
    rc, lines, _, err = launch(SCRIPT, data, tmp_path / "run", 2, "false", "--lr", 1e30)
    assert rc == 1, (lines, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("medurwkv_net.reliability.divergence.TrainingDivergedError: training diverged: the loss "
                           "is nan at epoch 1, iteration 2 (iteration 2 of the epoch)"), last
    assert "a learning rate too high for this network (this run: 1e+30; try 10x lower)" in last
    assert [ln for ln in lines if ln.startswith("ITER")] == ["ITER 1 1"]  # stopped before anything else ran
    models = tmp_path / "run" / "models"
    assert not (models / "model.pt").exists() and not list((models / "checkpoints").iterdir())
    assert not (models / "run.lock").exists()


def test_nan_in_an_image_is_named_as_bad_data(tmp_path):
    data = make_data(tmp_path / "data")
    datalist = json.loads((data / "datalist.json").read_text())
    for case in datalist["training"]:
        img = nib.load(case["image"])
        arr = np.asarray(img.dataobj).copy()
        arr[3, 3] = np.nan
        nib.save(nib.Nifti1Image(arr, img.affine), case["image"])
    rc, lines, _, err = launch(SCRIPT, data, tmp_path / "run", 1, "false")
    assert rc == 1, (lines, err)
    last = err.strip().splitlines()[-1]
    assert "the loss is nan at epoch 1, iteration 1" in last and "bad data: this batch's 'image' holds" in last, last
