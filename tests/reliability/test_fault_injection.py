"""Fault injection: SIGKILL a training process mid-epoch and in the middle of a checkpoint write.

One scenario, three processes (kept short: each process start costs the torch/MONAI import):
  A) train 4 epochs (8 iterations each), SIGKILL at iteration 19 (epoch 3 of 4, mid-epoch);
  B) resume; SIGKILL inside the first checkpoint write (temp file complete, before os.replace);
  C) resume again and finish.
"""
import signal
from pathlib import Path

import torch

from medurwkv_net.reliability import find_checkpoints, load_checkpoint_file

from ._subprocess import launch
from ._train_helpers import make_run

SCRIPT = Path(__file__).with_name("fault_train.py")
EPOCH_LEN = 8
MAX_EPOCHS = 4


def _launch(save_dir, resume, *extra, kill_on=None, timeout=240):
    """Run fault_train.py; if ``kill_on`` prefix appears on stdout, SIGKILL the child right then."""
    return launch(SCRIPT, save_dir, MAX_EPOCHS, resume, *extra, kill_on=kill_on, timeout=timeout)


def _iters(lines):
    return [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("ITER ")]


def test_sigkill_mid_epoch_and_during_checkpoint_write(tmp_path):
    d = tmp_path / "ckpt"

    # A) killed mid-epoch 3
    rc, lines, killed, err = _launch(d, "false", "--hang-at-iteration", "19", kill_on="PAUSED")
    assert rc == -signal.SIGKILL and killed == "PAUSED 3 19", (lines, err)
    assert [p.name for p in find_checkpoints(d)] == ["checkpoint_16.pt", "checkpoint_8.pt"]
    hist_a = load_checkpoint_file(d / "checkpoint_16.pt")["progress"]["history"]
    assert [h["epoch"] for h in hist_a] == [1, 2]
    before = {p.name: p.read_bytes() for p in find_checkpoints(d)}

    # B) resumed from epoch 2; killed inside the epoch-3 checkpoint write, before os.replace
    rc, lines, killed, err = _launch(d, "true", "--hang-on-save", "1", kill_on="HOOK")
    assert rc == -signal.SIGKILL and killed is not None, (lines, err)
    assert lines[0] == "STARTED epoch=2 iteration=16 from=checkpoint_16.pt", lines
    assert _iters(lines) == [(3, i) for i in range(17, 25)]  # epoch 3 redone from its start
    _, tmp_file, final = killed.split()
    assert Path(final).name == "checkpoint_24.pt" and not Path(final).exists()
    assert Path(tmp_file).exists()  # the half-committed write is only a temp file
    # previous checkpoints untouched (rotation deferred until after a successful replace)
    assert {p.name: p.read_bytes() for p in find_checkpoints(d)} == before
    assert load_checkpoint_file(d / "checkpoint_16.pt")["trainer"]["iteration"] == 16

    # C) resume again and finish
    out = tmp_path / "final_model.pt"
    rc, lines, killed, err = _launch(d, "true", "--out", str(out))
    assert rc == 0, err
    assert lines[0] == "STARTED epoch=2 iteration=16 from=checkpoint_16.pt"
    assert _iters(lines) == [(e, i) for e in (3, 4) for i in range((e - 1) * EPOCH_LEN + 1, e * EPOCH_LEN + 1)]
    assert lines[-1] == f"DONE {MAX_EPOCHS} {MAX_EPOCHS * EPOCH_LEN}"
    assert not Path(tmp_file).exists()  # stale temp file of the killed write cleaned up
    assert [p.name for p in find_checkpoints(d)] == ["checkpoint_32.pt", "checkpoint_24.pt"]

    final_ckpt = load_checkpoint_file(d / "checkpoint_32.pt")
    assert final_ckpt["trainer"]["iteration"] == 32 and final_ckpt["trainer"]["epoch_length"] == EPOCH_LEN
    hist = final_ckpt["progress"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]  # continuous, nothing repeated or skipped
    assert hist[:2] == hist_a  # history of the killed run carried over unchanged
    assert final_ckpt["progress"]["best_metric"] == max(h["metrics"]["val_acc"] for h in hist)

    # the resumed training equals an uninterrupted one (RNG, optimizer, scheduler and data order restored)
    model, opt, sched, loader, trainer = make_run()
    trainer.run(loader, max_epochs=MAX_EPOCHS)
    resumed = torch.load(out, weights_only=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(final_ckpt["model"]["0.weight"], resumed["0.weight"], rtol=0, atol=0)
