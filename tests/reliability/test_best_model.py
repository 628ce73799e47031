"""BestModelSaver: atomic writes, full disk, resume keeps the better model, no NaN model or metric saved."""
import logging
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from medurwkv_net.reliability import AtomicWriteError, BestModelSaver, ResumableCheckpoint, load_checkpoint_file

from ._train_helpers import make_run

REPO = Path(__file__).resolve().parents[2]


def _evaluator(saver, trainer, scores):
    """An evaluator whose key metric is the next value of ``scores``, at the trainer's epoch."""
    ev = Engine(lambda e, b: None)

    @ev.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.epoch = trainer.state.epoch
        engine.state.metrics["val_acc"] = scores[trainer.state.epoch - 1]

    saver.attach(ev)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: ev.run([0]))
    return ev


def _run(tmp_path, scores, resume, max_epochs):
    model, opt, sched, loader, trainer = make_run()
    saver = BestModelSaver(str(tmp_path / "models"), {"model": model}, key_metric_name="val_acc")
    ev = _evaluator(saver, trainer, scores)
    ResumableCheckpoint(tmp_path / "models" / "checkpoints", trainer, {"model": model, "optimizer": opt},
                        resume=resume, metric_name="val_acc", metric_engine=ev, best_model=saver)
    weights = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: weights.setdefault(
        e.state.epoch, {k: v.clone() for k, v in model.state_dict().items()}))
    trainer.run(loader, max_epochs=max_epochs)
    return saver, weights


def _same(path, weights):
    saved = torch.load(path, weights_only=True)
    return all(torch.equal(saved[k], v) for k, v in weights.items())


def test_resume_never_replaces_the_best_model_with_a_worse_one(tmp_path, caplog):
    scores = [0.50, 0.90, 0.60, 0.70, 0.95]
    saver, weights = _run(tmp_path, scores, False, 3)
    assert (saver.best_metric, saver.best_epoch) == (0.90, 2)
    assert _same(tmp_path / "models" / "model.pt", weights[2])
    with caplog.at_level(logging.INFO):
        saver, _ = _run(tmp_path, scores, True, 4)  # epoch 4 is worse than epoch 2
    assert (saver.best_metric, saver.best_epoch) == (0.90, 2)
    assert _same(tmp_path / "models" / "model.pt", weights[2])
    assert "only a better one replaces it" in caplog.text
    # a better epoch after resuming does replace it
    saver, weights = _run(tmp_path, scores, True, 5)
    assert (saver.best_metric, saver.best_epoch) == (0.95, 5)
    assert _same(tmp_path / "models" / "model.pt", weights[5])


def test_resume_with_a_changed_best_model_keeps_it_and_says_so(tmp_path, caplog):
    scores = [0.5, 0.9, 0.6, 0.7]
    _run(tmp_path, scores, False, 2)
    replaced = {"0.weight": torch.zeros(8, 6)}
    torch.save(replaced, tmp_path / "models" / "model.pt")
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, scores, True, 3)
    assert "is not the best model recorded in the checkpoint (epoch 2, 0.9000)" in caplog.text
    assert torch.equal(torch.load(tmp_path / "models" / "model.pt", weights_only=True)["0.weight"], torch.zeros(8, 6))
    (tmp_path / "models" / "model.pt").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        saver, _ = _run(tmp_path, scores, True, 4)
    assert (saver.best_metric, saver.best_epoch) == (0.7, 4)
    assert "which is missing; the next validation writes a new best model" in caplog.text
    assert (tmp_path / "models" / "model.pt").is_file()


def test_nan_metric_is_no_improvement_and_nan_weights_are_never_saved(tmp_path, caplog):
    model = torch.nn.Linear(2, 2)
    saver = BestModelSaver(str(tmp_path), {"model": model}, key_metric_name="m")
    ev = Engine(lambda e, b: None)
    values = iter([float("nan"), 0.3, 0.5])
    ev.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("m", next(values)))
    saver.attach(ev)
    with caplog.at_level(logging.WARNING):
        ev.run([0])
    assert "m is nan at epoch 1: not a result" in caplog.text and not (tmp_path / "model.pt").exists()
    ev.run([0], max_epochs=1)
    good = (tmp_path / "model.pt").read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"refusing to save the best model '.*model.pt' at epoch 1: 1 weight tensor"):
        ev.run([0], max_epochs=1)
    assert (tmp_path / "model.pt").read_bytes() == good


def _limit_file_size():
    """Files of this process cannot grow past 64 KiB (what a full disk does to a write)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))


def _in_child(scenario: str, tmp_path) -> None:
    """Run ``scenario(tmp_path)`` of this module in a new Python process: the file-size limit it sets must not
    reach pytest's own files (its log or captured output can be larger than the limit)."""
    code = (f"import sys; from pathlib import Path; from tests.reliability.test_best_model import {scenario}; "
            f"{scenario}(Path(sys.argv[1]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def _write_small_then_big(tmp_path):
    model = torch.nn.Linear(4, 2)
    saver = BestModelSaver(str(tmp_path), {"model": model}, key_metric_name="m")
    ev = Engine(lambda e, b: None)
    values = iter([0.1, 0.2])
    ev.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("m", next(values)))
    saver.attach(ev)
    ev.run([0])
    return model, saver, ev


def test_full_disk_during_best_model_write_keeps_the_old_model_and_names_the_file(tmp_path):
    _in_child("full_disk_during_best_model_write", tmp_path)


def full_disk_during_best_model_write(tmp_path):
    model, saver, ev = _write_small_then_big(tmp_path)
    old = (tmp_path / "model.pt").read_bytes()
    model.weight = torch.nn.Parameter(torch.zeros(2, 40000))  # ~320 kB: more than the limit lets through
    _limit_file_size()
    with pytest.raises(AtomicWriteError) as info:
        ev.run([0], max_epochs=1)
    msg = str(info.value)
    assert f"could not write '{tmp_path / 'model.pt'}': the disk is full or a size limit was reached" in msg
    assert "MiB free" in msg and "The previous 'model.pt', if any, is unchanged" in msg
    assert (tmp_path / "model.pt").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left


def test_full_disk_during_a_checkpoint_write_names_the_file_and_keeps_the_last_checkpoint(tmp_path):
    _in_child("full_disk_during_a_checkpoint_write", tmp_path)


def full_disk_during_a_checkpoint_write(tmp_path):
    model, opt, sched, loader, trainer = make_run()
    ckpt = ResumableCheckpoint(tmp_path, trainer, {"model": model, "optimizer": opt})
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda _: _limit_file_size())
    big = torch.nn.Linear(200, 200)  # makes the second checkpoint larger than the limit lets through

    @trainer.on(Events.EPOCH_STARTED(once=2))
    def _grow(_):
        ckpt.objects["big"] = big
        ckpt.checkpointer.to_save["big"] = big

    with pytest.raises(AtomicWriteError) as info:
        trainer.run(loader, max_epochs=2)
    msg = str(info.value)
    assert msg.startswith(f"could not write '{tmp_path / 'checkpoint_16.pt'}': the disk is full or a size limit"), msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_8.pt"]
    assert load_checkpoint_file(tmp_path / "checkpoint_8.pt")["trainer"]["iteration"] == 8
