"""Kill a MONAI training (bundle components, random augmentation) mid-epoch and inside the best-model write;
the resumed run must end with exactly the weights, metrics and best model of an uninterrupted run."""
import json
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medurwkv_net.reliability import load_checkpoint_file

from ._subprocess import launch

SCRIPT = Path(__file__).with_name("bundle_train.py")
EPOCHS = 4


def make_data(folder: Path, n_train: int = 8, n_val: int = 2) -> Path:
    """Tiny 2D NIfTI images (16x16) and index labels, and a datalist."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lists = {"training": [], "validation": []}
    for i in range(n_train + n_val):
        img = rng.random((16, 16)).astype(np.float32)
        lab = (img > 0.5).astype(np.uint8)
        img = img + 0.3 * rng.standard_normal((16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.eye(4)), folder / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), folder / f"c{i}_seg.nii.gz")
        split = "training" if i < n_train else "validation"
        lists[split].append({"image": str(folder / f"c{i}.nii.gz"), "label": str(folder / f"c{i}_seg.nii.gz")})
    (folder / "datalist.json").write_text(json.dumps(lists))
    return folder


def _lines(lines, prefix):
    return [ln for ln in lines if ln.startswith(prefix)]


def test_kill_mid_epoch_and_in_best_model_write_then_resume_equals_uninterrupted(tmp_path):
    data = make_data(tmp_path / "data")
    ref_out, run = tmp_path / "ref.pt", tmp_path / "run"
    rc, ref, _, err = launch(SCRIPT, data, tmp_path / "ref", EPOCHS, "false", "--out", ref_out)
    assert rc == 0, err
    ref_vals = _lines(ref, "VAL ")
    assert len(ref_vals) == EPOCHS and len({v.split()[2] for v in ref_vals}) > 1, ref_vals  # metrics vary

    # A) killed in the middle of epoch 3 (4 iterations per epoch)
    rc, lines, killed, err = launch(SCRIPT, data, run, EPOCHS, "false", "--hang-at-iteration", 10, kill_on="PAUSED")
    assert rc == -signal.SIGKILL and killed == "PAUSED 3 10", (lines, err)
    best_a = (run / "models" / "model.pt").read_bytes()
    assert (run / "models" / "run.lock").exists()  # left behind by the killed run

    # B) resumed at the end of epoch 2, killed inside the first write of models/model.pt (epoch 3 improved)
    rc, lines, killed, err = launch(SCRIPT, data, run, EPOCHS, "true", "--hang-on-best-save", 1, kill_on="HOOK")
    assert rc == -signal.SIGKILL and killed is not None, (lines, err)
    assert "taking over the lock" in err and "is not running" in err, err
    assert _lines(lines, "ITER ")[0] == "ITER 3 9", lines  # epoch 3 redone from its start
    _, tmp_file, final = killed.split()
    assert Path(final) == run / "models" / "model.pt" and Path(tmp_file).exists()
    assert (run / "models" / "model.pt").read_bytes() == best_a  # the previous best model is intact
    torch.load(run / "models" / "model.pt", weights_only=True)

    # C) resumed again: finishes; everything equals the uninterrupted run, bitwise
    out = tmp_path / "resumed.pt"
    rc, lines, _, err = launch(SCRIPT, data, run, EPOCHS, "true", "--out", out)
    assert rc == 0, err
    assert not Path(tmp_file).exists() and "unfinished write" in err
    assert _lines(lines, "VAL ") == ref_vals[2:]
    assert lines[-1] == ref[-1], (lines[-1], ref[-1])  # DONE with the same best metric and epoch
    for mine, theirs in ((out, ref_out), (run / "models" / "model.pt", tmp_path / "ref" / "models" / "model.pt")):
        a, b = torch.load(mine, weights_only=True), torch.load(theirs, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), mine
    ckpt = load_checkpoint_file(run / "models" / "checkpoints" / f"checkpoint_{EPOCHS * 4}.pt")
    assert [h["epoch"] for h in ckpt["progress"]["history"]] == list(range(1, EPOCHS + 1))
    assert ckpt["progress"]["data_rng"], "random transform states are in the checkpoint"
    assert not (run / "models" / "run.lock").exists()  # released at completion
