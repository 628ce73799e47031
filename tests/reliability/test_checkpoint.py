import os

import pytest
import torch
from ignite.engine import Events

from medurwkv_net.reliability import (
    CheckpointError,
    ResumableCheckpoint,
    atomic_save,
    find_checkpoints,
    load_checkpoint_file,
)

from ._train_helpers import make_run


def _run(tmp_path, max_epochs, resume=False, stop_after_epoch=None, **kw):
    model, opt, sched, loader, trainer = make_run()
    ckpt = ResumableCheckpoint(
        tmp_path, trainer, {"model": model, "optimizer": opt, "lr_scheduler": sched},
        resume=resume, metric_name="val_acc", **kw,
    )
    if stop_after_epoch is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
    trainer.run(loader, max_epochs=max_epochs)
    return model, trainer, ckpt


def test_resume_continues_exactly(tmp_path):
    ref_model, ref_trainer, ref_ckpt = _run(tmp_path / "ref", 5)
    # interrupted run: stops after epoch 2, then resumes in a fresh process-like setup (new objects)
    _run(tmp_path / "cut", 5, stop_after_epoch=2)
    model, trainer, ckpt = _run(tmp_path / "cut", 5, resume=True)
    assert ckpt.loaded_from is not None and ckpt.loaded_from.name == "checkpoint_16.pt"
    assert trainer.state.epoch == 5 and trainer.state.iteration == 5 * 8
    # RNG, optimizer, scheduler and data order restored: bit-identical to the uninterrupted run
    for a, b in zip(ref_model.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [h["epoch"] for h in ckpt.metric_history] == [1, 2, 3, 4, 5]
    assert ckpt.metric_history == ref_ckpt.metric_history
    assert ckpt.progress.best_metric == ref_ckpt.progress.best_metric
    final = load_checkpoint_file(ckpt.last_checkpoint)
    assert final["trainer"]["iteration"] == 40
    assert final["optimizer"]["param_groups"][0]["lr"] == sched_lr_after(5)
    # n_saved=2: only the two newest are kept
    assert [p.name for p in find_checkpoints(tmp_path / "cut")] == ["checkpoint_40.pt", "checkpoint_32.pt"]


def sched_lr_after(epochs):
    return 1e-2 * 0.5 ** (epochs // 3)


def test_checkpoint_cut_in_half_is_refused_and_previous_used(tmp_path, caplog):
    _run(tmp_path, 3)
    newest, previous = find_checkpoints(tmp_path)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(newest.name)):
        load_checkpoint_file(newest)
    model, trainer, ckpt = _run(tmp_path, 4, resume=True)
    assert ckpt.loaded_from == previous
    assert len(ckpt.refused) == 1 and newest.name in ckpt.refused[0]
    assert trainer.state.epoch == 4
    assert [h["epoch"] for h in ckpt.metric_history] == [1, 2, 3, 4]
    assert load_checkpoint_file(ckpt.last_checkpoint)["trainer"]["iteration"] == 32


def test_all_checkpoints_bad_is_an_error_naming_each(tmp_path):
    _run(tmp_path, 2)
    for p in find_checkpoints(tmp_path):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="all 2 candidate") as ei:
        _run(tmp_path, 3, resume=True)
    for p in find_checkpoints(tmp_path):
        assert p.name in str(ei.value)


def test_resume_true_without_checkpoint_errors_auto_starts(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        _run(tmp_path / "a", 1, resume=True)
    _, trainer, ckpt = _run(tmp_path / "b", 1, resume="auto")
    assert trainer.state.epoch == 1 and ckpt.loaded_from is None


def test_fresh_run_archives_previous_checkpoints(tmp_path):
    _run(tmp_path, 2)
    before = {p.name: p.read_bytes() for p in find_checkpoints(tmp_path)}
    _run(tmp_path, 1)
    archived = list((tmp_path / "previous_runs").glob("*/checkpoint_*.pt"))
    assert {p.name: p.read_bytes() for p in archived} == before
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint_8.pt"]


def test_mid_epoch_checkpoint_resumes_mid_epoch(tmp_path):
    _run(tmp_path, 3, save_every_iterations=3, stop_after_epoch=None, n_saved=3)
    # keep only the mid-epoch checkpoint at iteration 21 (epoch 3, iteration 5 of 8)
    for p in find_checkpoints(tmp_path):
        if p.name != "checkpoint_21.pt":
            p.unlink()
    ck = load_checkpoint_file(tmp_path / "checkpoint_21.pt")
    assert [h["epoch"] for h in ck["progress"]["history"]] == [1, 2]
    seen = []
    model, opt, sched, loader, trainer = make_run()
    c = ResumableCheckpoint(tmp_path, trainer, {"model": model, "optimizer": opt, "lr_scheduler": sched}, resume=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    trainer.run(loader, max_epochs=3)
    assert seen == [22, 23, 24]
    assert [h["epoch"] for h in c.metric_history] == [1, 2, 3]


def test_metric_engine_validated_after_save_is_recorded(tmp_path):
    from ignite.engine import Engine

    model, opt, sched, loader, trainer = make_run()
    evaluator = Engine(lambda e, b: None)
    ckpt = ResumableCheckpoint(tmp_path, trainer, {"model": model}, metric_name="dice",
                               metric_engine=evaluator, mode="max")

    @evaluator.on(Events.EPOCH_COMPLETED)  # where ignite/MONAI metrics are computed
    def _set(e):
        e.state.metrics["dice"] = [0.5, 0.7, 0.6][trainer.state.epoch - 1]

    # validation registered AFTER the checkpoint handler: checkpoint must still carry the metric
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0], max_epochs=1))
    trainer.run(loader, max_epochs=3)
    ck = load_checkpoint_file(ckpt.last_checkpoint)
    assert [h["metrics"]["dice"] for h in ck["progress"]["history"]] == [0.5, 0.7, 0.6]
    assert ck["progress"]["best_metric"] == 0.7 and ck["progress"]["best_metric_epoch"] == 2


def test_bad_arguments(tmp_path):
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="reserved"):
        ResumableCheckpoint(tmp_path, objects={"trainer": model})
    with pytest.raises(TypeError, match="'thing'"):
        ResumableCheckpoint(tmp_path, objects={"thing": 3})
    with pytest.raises(ValueError, match="resume"):
        ResumableCheckpoint(tmp_path, objects={"model": model}, resume="sometimes")
    ck = ResumableCheckpoint(tmp_path, objects={"model": model, "scaler": None}, resume="false")
    assert ck.resume is False and "scaler" not in ck.objects


def test_atomic_save_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(3)}, target)

    def boom(tmp, final):
        raise KeyboardInterrupt("injected")

    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(3)}, target, before_replace=boom)
    torch.testing.assert_close(torch.load(target, weights_only=True)["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["x.pt"]
    assert (target.stat().st_mode & 0o777) & 0o044  # readable by group/others like a normal file


def test_amp_scaler_state_is_saved_and_restored(tmp_path):
    model, opt, sched, loader, trainer = make_run()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ResumableCheckpoint(tmp_path, trainer, {"model": model, "optimizer": opt, "scaler": scaler})
    trainer.run(loader, max_epochs=1)
    assert load_checkpoint_file(tmp_path / "checkpoint_8.pt")["scaler"]["scale"] == 1024.0
    model, opt, sched, loader, trainer = make_run()
    scaler2 = torch.amp.GradScaler("cpu", init_scale=2.0)
    ResumableCheckpoint(tmp_path, trainer, {"model": model, "optimizer": opt, "scaler": scaler2}, resume=True)
    trainer.run(loader, max_epochs=1)  # already complete: loads, runs no iteration
    assert scaler2.state_dict()["scale"] == 1024.0 and trainer.state.iteration == 8


def test_run_continued_in_process_does_not_archive_its_own_checkpoints(tmp_path):
    model, opt, sched, loader, trainer = make_run()
    ResumableCheckpoint(tmp_path, trainer, {"model": model}, resume=False)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())
    trainer.run(loader, max_epochs=3)
    trainer.run(loader, max_epochs=3)  # ignite continues the terminated run: STARTED fires again
    assert trainer.state.epoch == 3
    assert not (tmp_path / "previous_runs").exists()
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint_24.pt", "checkpoint_16.pt"]


class _Counter:
    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, sd):
        self.n = sd["n"]


def test_checkpoint_holds_state_after_handlers_attached_later(tmp_path):
    """Handlers attached after the checkpoint (e.g. LrScheduleHandler listed later in train#handlers) have
    run when the epoch checkpoint is written."""
    model, opt, sched, loader, trainer = make_run()
    counter = _Counter()
    ResumableCheckpoint(tmp_path, trainer, {"model": model, "counter": counter}, save_every_iterations=3,
                        n_saved=None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _count(e):
        counter.n += 1

    trainer.run(loader, max_epochs=3)
    for p in find_checkpoints(tmp_path):
        ck = load_checkpoint_file(p)
        it = ck["trainer"]["iteration"]
        assert ck["counter"]["n"] == it // 8, p.name


def test_resume_with_changed_epoch_length_starts_at_next_epoch(tmp_path, caplog):
    _run(tmp_path, 2)  # 8 iterations per epoch
    model, opt, sched, loader, trainer = make_run(n_samples=16)  # now 4 per epoch
    seen = []
    ResumableCheckpoint(tmp_path, trainer, {"model": model, "optimizer": opt, "lr_scheduler": sched}, resume=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.iteration)))
    trainer.run(loader, max_epochs=3)
    assert seen == [(3, 9), (3, 10), (3, 11), (3, 12)]
    assert "epoch_length=8, this run has 4" in caplog.text


def test_checkpoint_beyond_max_epochs_is_refused(tmp_path):
    _run(tmp_path, 3)
    with pytest.raises(CheckpointError, match="epoch 3, beyond this run's max_epochs=2"):
        _run(tmp_path, 2, resume=True)


def test_checkpoint_of_another_model_is_refused_naming_file(tmp_path):
    _run(tmp_path, 1)
    _, opt, sched, loader, trainer = make_run()
    other = torch.nn.Linear(6, 1)
    ResumableCheckpoint(tmp_path, trainer, {"model": other}, resume=True)
    with pytest.raises(CheckpointError, match=r"checkpoint_8\.pt' does not fit the objects to resume"):
        trainer.run(loader, max_epochs=2)


def _poly_run(tmp_path, max_epochs, resume, sched_factory=None):
    model, opt, _, loader, trainer = make_run()
    epoch_length = len(loader)
    if sched_factory is None:
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=max_epochs, power=0.9)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    else:
        sched = sched_factory(opt, max_epochs, epoch_length)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: sched.step())
    lrs = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    ResumableCheckpoint(tmp_path, trainer, {"model": model, "optimizer": opt, "lr_scheduler": sched}, resume=resume)
    trainer.run(loader, max_epochs=max_epochs)
    return model, sched, lrs


def test_finished_run_extended_to_more_epochs_keeps_training(tmp_path, caplog):
    model1, sched1, _ = _poly_run(tmp_path, 1, resume=False)
    assert sched1.get_last_lr()[0] == 0.0  # the 1-epoch polynomial schedule ended at 0
    before = {k: v.clone() for k, v in model1.state_dict().items()}
    with caplog.at_level("WARNING"):
        model2, sched2, lrs = _poly_run(tmp_path, 2, resume=True)
    assert "stretched from total_iters=1 to 2" in caplog.text
    # epoch 2 trains at the rate a 2-epoch schedule has after one epoch: 1e-2 * (1 - 1/2) ** 0.9
    assert len(lrs) == 8 and all(lr == pytest.approx(1e-2 * 0.5 ** 0.9) for lr in lrs)
    assert sched2.total_iters == 2 and sched2.get_last_lr()[0] == 0.0
    assert any(not torch.equal(before[k], v) for k, v in model2.state_dict().items())


def test_extending_a_run_with_one_cycle_schedule_is_refused(tmp_path):
    def one_cycle(opt, max_epochs, epoch_length):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=max_epochs * epoch_length)

    _poly_run(tmp_path, 1, resume=False, sched_factory=one_cycle)
    with pytest.raises(CheckpointError, match=r"max_epochs=1; this run has max_epochs=2.*'lr_scheduler' \(OneCycleLR"):
        _poly_run(tmp_path, 2, resume=True, sched_factory=one_cycle)
