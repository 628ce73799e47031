"""Resumable, atomically written training checkpoints for ignite / MONAI workflows.

``ResumableCheckpoint`` builds on :class:`ignite.handlers.Checkpoint` with :class:`AtomicDiskSaver`.
Every checkpoint holds the trainer state (epoch, iteration), the given objects (model, optimizer, LR
scheduler, AMP scaler, ...), RNG states (python, numpy, torch, cuda, and those of the data pipeline:
MONAI ``Randomizable`` transforms and ``torch.Generator`` objects of the data loader), the best metric with
the full metric history and the record of the best-model file (:class:`BestModelSaver`). With ``resume`` it
restores the newest *readable* checkpoint at ``Events.STARTED``: a truncated or unreadable newer file is
reported (naming the file) and the previous good one is used.
Loading uses ``torch.load(weights_only=True)`` only: everything is stored as tensors and plain types.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from .atomic import TMP_SUFFIX, AtomicDiskSaver
from .best_model import non_finite_parameters
from .checkpoint_state import (
    FORMAT,
    TrainingProgress,
    capture_rng_state,
    find_checkpoints,
    load_checkpoint_file,
    restore_rng_state,
)
from .data_rng import capture_data_rng, restore_data_rng
from medurwkv_net.core.errors import CheckpointError

__all__ = [
    "ResumableCheckpoint",
    "TrainingProgress",
    "capture_rng_state",
    "restore_rng_state",
    "load_checkpoint_file",
    "find_checkpoints",
    "FORMAT",
]

logger = logging.getLogger(__name__)

_RESERVED = ("trainer", "progress", "checkpointer", "best_model")


# ------------------------------------------------------------------------------------- the handler
class ResumableCheckpoint:
    """Atomic, resumable checkpointing of a whole training run (ignite handler, MONAI bundle friendly).

    Args:
        save_dir: folder of the checkpoints (created if missing).
        trainer: the trainer engine; if given the handler attaches at once, otherwise call ``attach(trainer)``
            (MONAI workflows do this for every entry of ``train#handlers``).
        objects: states to save, e.g. ``{"model": net, "optimizer": opt, "lr_scheduler": sched,
            "scaler": scaler}``. ``None`` values are dropped (e.g. no scaler without AMP). The keys
            'trainer', 'progress' and 'checkpointer' are reserved.
        resume: ``True`` load the newest good checkpoint at ``Events.STARTED`` (error if there is none),
            ``"auto"`` resume if one exists, ``False`` start afresh (previous checkpoints found in
            ``save_dir`` are moved to ``save_dir/previous_runs/<time>/``, never deleted).
        filename_prefix: files are ``<prefix>_<iteration>.pt``.
        save_every_epochs: save at every N-th ``EPOCH_COMPLETED`` (and at the last epoch).
        save_every_iterations: additionally save every N iterations (mid-epoch).
        n_saved: number of checkpoints kept (>= 2 recommended: the older one is the fallback).
        metric_name / metric_engine / mode: the metric to track as "best"; its values are taken from
            ``metric_engine.state.metrics`` (e.g. the MONAI evaluator) when it completes, else from the trainer's
            ``state.metrics`` at epoch end. The whole ``state.metrics`` dict is recorded per epoch.
        strict: passed to ``model.load_state_dict`` on resume.
        restore_rng: restore the RNG states on resume (default).
        before_replace: test hook ``f(tmp_path, final_path)`` called before each ``os.replace``.
        best_model: the :class:`BestModelSaver` of the validation evaluator; its record (best value, epoch,
            file hash) is saved with every checkpoint and restored on resume, so that a resumed run never
            replaces the best model with a worse one.

    A checkpoint is never written while a weight holds NaN/Inf (the save raises ``RuntimeError``): the last
    checkpoint on disk is always one a run can resume from.
    """

    def __init__(
        self,
        save_dir: str | Path,
        trainer: Engine | None = None,
        objects: Mapping[str, Any] | None = None,
        resume: bool | str = False,
        filename_prefix: str = "checkpoint",
        save_every_epochs: int = 1,
        save_every_iterations: int | None = None,
        n_saved: int = 2,
        metric_name: str | None = None,
        metric_engine: Engine | None = None,
        mode: str = "max",
        strict: bool = True,
        restore_rng: bool = True,
        before_replace: Callable[[Path, Path], None] | None = None,
        best_model: Any = None,
    ):
        if isinstance(resume, str):
            low = resume.strip().lower()
            resume = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(low, low)
        if resume not in (True, False, "auto"):
            raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
        if save_every_epochs is not None and int(save_every_epochs) < 1:
            raise ValueError(f"save_every_epochs must be >= 1, got {save_every_epochs}")
        if save_every_iterations is not None and int(save_every_iterations) < 1:
            raise ValueError(f"save_every_iterations must be >= 1 or None, got {save_every_iterations}")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", filename_prefix):
            raise ValueError(f"filename_prefix must be a plain file name part, got {filename_prefix!r}")
        objects = {k: v for k, v in dict(objects or {}).items() if v is not None}
        bad = [k for k in objects if k in _RESERVED]
        if bad:
            raise ValueError(f"objects use reserved keys {bad}; reserved: {list(_RESERVED)}")
        for k, v in objects.items():
            if not (hasattr(v, "state_dict") and hasattr(v, "load_state_dict")):
                raise TypeError(f"object '{k}' ({type(v).__name__}) has no state_dict/load_state_dict")
        self.save_dir = Path(save_dir)
        self.objects = objects
        self.resume = resume
        self.filename_prefix = filename_prefix
        self.save_every_epochs = int(save_every_epochs)
        self.save_every_iterations = None if save_every_iterations is None else int(save_every_iterations)
        self.n_saved = n_saved
        self.metric_engine = metric_engine
        self.strict = strict
        self.before_replace = before_replace
        if best_model is not None and not all(hasattr(best_model, a) for a in ("state_dict", "load_state_dict")):
            raise TypeError(f"best_model ({type(best_model).__name__}) has no state_dict/load_state_dict")
        self.best_model = best_model
        self.progress = TrainingProgress(metric_name=metric_name, mode=mode)
        self.progress.restore_rng = restore_rng
        self.trainer: Engine | None = None
        self.checkpointer: Checkpoint | None = None
        self.saver: AtomicDiskSaver | None = None
        self.loaded_from: Path | None = None
        self.refused: list[str] = []  # errors of unusable checkpoints met while resuming
        self._last_saved_iteration: int | None = None
        if trainer is not None:
            self.attach(trainer)

    # -------------------------------------------------------------------------------- attaching
    def attach(self, engine: Engine) -> None:
        """Attach the saving (and, with ``resume``, the restoring at ``Events.STARTED``) to ``engine``."""
        if self.trainer is not None:
            if engine is not self.trainer:
                raise RuntimeError("ResumableCheckpoint is already attached to another trainer")
            return
        self.trainer = engine
        self.saver = AtomicDiskSaver(
            self.save_dir, create_dir=True, require_empty=False, before_replace=self.before_replace
        )
        to_save = {"trainer": engine, **self.objects, "progress": self.progress}
        if self.best_model is not None:
            to_save["best_model"] = self.best_model
        self.checkpointer = Checkpoint(
            to_save,
            self.saver,
            filename_prefix=self.filename_prefix,
            n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.iteration,
            filename_pattern="{filename_prefix}_{global_step}.{ext}",
            include_self=True,
        )
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration_completed)
        if self.metric_engine is not None:
            self.metric_engine.add_event_handler(Events.COMPLETED, self._on_metrics_completed)

    # ------------------------------------------------------------------------------------ events
    def _move_to_end(self, engine: Engine) -> None:
        """Make our save handlers the last ones of their events, whatever the order handlers were attached
        in (e.g. before LrScheduleHandler / ValidationHandler in a bundle's ``train#handlers``): a checkpoint
        then holds the state *after* every other end-of-epoch handler ran (scheduler stepped, metrics in)."""
        for event, handler in (
            (Events.EPOCH_COMPLETED, self._on_epoch_completed),
            (Events.ITERATION_COMPLETED, self._on_iteration_completed),
        ):
            if engine.has_event_handler(handler, event):
                engine.remove_event_handler(handler, event)
            engine.add_event_handler(event, handler)

    def _on_started(self, engine: Engine) -> None:
        self._move_to_end(engine)
        if engine.state.iteration > 0:
            # run() continuing in this process (after terminate/interrupt) or state restored by another
            # loader before run(): the run is already under way, neither reload nor archive anything
            logger.info(f"trainer starts at iteration {engine.state.iteration}: no checkpoint loaded")
            return
        if idist.get_rank() == 0:
            self._cleanup_temp_files()
        if self.resume:
            self.load_latest(engine, required=self.resume is True)
        elif idist.get_rank() == 0:
            self._archive_previous_run()

    def _on_epoch_completed(self, engine: Engine) -> None:
        if self.metric_engine is None:
            self.progress.record(engine.state.epoch, engine.state.iteration, engine.state.metrics)
        last = engine.state.max_epochs is not None and engine.state.epoch >= engine.state.max_epochs
        if engine.state.epoch % self.save_every_epochs == 0 or last:
            self._save(engine)

    def _on_iteration_completed(self, engine: Engine) -> None:
        if self.save_every_iterations and engine.state.iteration % self.save_every_iterations == 0:
            self._save(engine)

    def _on_metrics_completed(self, evaluator: Engine) -> None:
        trainer = self.trainer
        if trainer is None or trainer.state.epoch < 1:
            return
        self.progress.record(trainer.state.epoch, trainer.state.iteration, evaluator.state.metrics)
        # validation ran after this iteration's checkpoint was written: write it again with the metric
        if self._last_saved_iteration == trainer.state.iteration:
            self._save(trainer)

    def _save(self, engine: Engine) -> None:
        assert self.checkpointer is not None
        bad = non_finite_parameters(self.objects)
        if bad:
            raise RuntimeError(
                f"refusing to write a checkpoint to '{self.save_dir}' at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}: {len(bad)} state tensor(s) hold NaN/Inf values (first: {bad[0]}). "
                "Training diverged; lower the learning rate or check the data, then resume from the last checkpoint."
            )
        loader = getattr(engine.state, "dataloader", None)
        self.progress.data_rng = capture_data_rng(loader) if loader is not None else None
        self.checkpointer(engine)
        self._last_saved_iteration = engine.state.iteration

    # ------------------------------------------------------------------------------------ resume
    @property
    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint file this handler wrote, or None."""
        if self.checkpointer is None or self.checkpointer.last_checkpoint is None:
            return None
        return Path(self.checkpointer.last_checkpoint)

    @property
    def metric_history(self) -> list[dict]:
        """The recorded metrics per epoch, oldest first."""
        return self.progress.history_list()

    def load_latest(self, engine: Engine, required: bool = True) -> Path | None:
        """Restore the newest readable checkpoint of ``save_dir`` into ``engine`` and the objects."""
        candidates = find_checkpoints(self.save_dir, self.filename_prefix)
        self.refused = []
        for path in candidates:
            try:
                ckpt = load_checkpoint_file(path)
            except CheckpointError as e:
                self.refused.append(str(e))
                logger.error(f"{e} -- trying the previous checkpoint")
                continue
            self._apply(engine, ckpt, path)
            return path
        if candidates:
            raise CheckpointError(
                f"no usable checkpoint in '{self.save_dir}': all {len(candidates)} candidate(s) were refused:\n  "
                + "\n  ".join(self.refused)
            )
        if required:
            raise CheckpointError(
                f"resume requested but '{self.save_dir}' holds no checkpoint '{self.filename_prefix}_<iteration>.pt'"
            )
        logger.info(f"no checkpoint in '{self.save_dir}': starting a new run")
        return None

    def _apply(self, engine: Engine, ckpt: Mapping, path: Path) -> None:
        missing = [k for k in self.objects if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"checkpoint '{path}' lacks the entries {missing} needed to resume (has {sorted(ckpt)})"
            )
        to_load = dict(self.objects)
        to_load["progress"] = self.progress
        try:
            Checkpoint.load_objects(to_load=to_load, checkpoint={k: ckpt[k] for k in to_load}, strict=self.strict)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint '{path}' does not fit the objects to resume: {e}") from e
        if "checkpointer" in ckpt and self.checkpointer is not None:
            self.checkpointer.load_state_dict(ckpt["checkpointer"])
        if self.best_model is not None:
            if "best_model" in ckpt:
                self.best_model.load_state_dict(ckpt["best_model"])
            else:
                logger.warning(
                    f"checkpoint '{path}' holds no record of the best model: the next validation result replaces "
                    "it whatever its value"
                )
        data_rng, loader = self.progress.data_rng, getattr(engine.state, "dataloader", None)
        if self.progress.restore_rng and loader is not None:
            if data_rng is None:
                logger.warning(
                    f"checkpoint '{path}' holds no random states of the data pipeline: the resumed run will see "
                    "other augmentations than an uninterrupted one"
                )
            else:
                restore_data_rng(loader, data_rng, source=f"checkpoint '{path}'")
        self._restore_trainer(engine, ckpt["trainer"], path)
        self._fit_schedules(engine, ckpt["trainer"], path)
        if self.metric_engine is not None and self.progress.best_metric is not None:
            state: Any = self.metric_engine.state  # MONAI's workflows add attributes to ignite's State
            if hasattr(state, "best_metric"):  # MONAI workflows keep the key metric's best here
                state.best_metric = self.progress.best_metric
                state.best_metric_epoch = self.progress.best_metric_epoch
        self.loaded_from = path
        self._last_saved_iteration = engine.state.iteration
        logger.info(
            f"resumed from '{path}': epoch {engine.state.epoch}, iteration {engine.state.iteration}, "
            f"best {self.progress.metric_name}={self.progress.best_metric}"
        )

    @staticmethod
    def _restore_trainer(engine: Engine, saved: Mapping, path: Path) -> None:
        iteration = int(saved["iteration"])
        saved_len = saved.get("epoch_length")
        cur_len = engine.state.epoch_length or saved_len
        max_epochs = engine.state.max_epochs if engine.state.max_epochs is not None else saved.get("max_epochs")
        if saved_len and cur_len and saved_len != cur_len:
            epoch = iteration // saved_len
            logger.warning(
                f"checkpoint '{path}' was written with epoch_length={saved_len}, this run has {cur_len}: "
                f"resuming at the start of epoch {epoch + 1}"
            )
            iteration = epoch * cur_len
        epoch = iteration // cur_len if cur_len else 0
        if max_epochs is not None and epoch > max_epochs:
            raise CheckpointError(f"checkpoint '{path}' is at epoch {epoch}, beyond this run's max_epochs={max_epochs}")
        engine.load_state_dict({"iteration": iteration, "epoch_length": cur_len, "max_epochs": max_epochs})

    def _fit_schedules(self, engine: Engine, saved: Mapping, path: Path) -> None:
        """Stretch LR schedules whose length was the saved run's length to this run's ``max_epochs``.

        A schedule over the whole run (e.g. ``PolynomialLR(total_iters=max_epochs)``) restored from a run of
        ``N`` epochs ends at epoch ``N``: continued to ``M > N`` epochs it would train at its final rate (0 for
        a polynomial decay) and change nothing. Its length (``total_iters`` / ``T_max``, in epochs or in
        iterations) is set to this run's and the current rate recomputed from the closed form, i.e. the
        schedule a run planned for ``M`` epochs has at this point. A schedule of another length is kept.
        """
        old_epochs, new_epochs = saved.get("max_epochs"), engine.state.max_epochs
        if old_epochs is None or new_epochs is None or int(old_epochs) == int(new_epochs):
            return
        old_epochs, new_epochs = int(old_epochs), int(new_epochs)
        old_len = saved.get("epoch_length") or engine.state.epoch_length
        new_len = engine.state.epoch_length or old_len
        lengths = {old_epochs: new_epochs}
        if old_len and new_len:
            lengths[old_epochs * int(old_len)] = new_epochs * int(new_len)
        for name, obj in self.objects.items():
            if not isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
                continue
            attr = next((a for a in ("total_iters", "T_max", "total_steps") if hasattr(obj, a)), None)
            if attr is None or int(getattr(obj, attr)) not in lengths:
                continue
            old = int(getattr(obj, attr))
            closed_form = getattr(obj, "_get_closed_form_lr", None)
            if attr == "total_steps" or closed_form is None:
                raise CheckpointError(
                    f"checkpoint '{path}' was written by a run of max_epochs={old_epochs}; this run has "
                    f"max_epochs={new_epochs}, but the LR scheduler '{name}' ({type(obj).__name__}, {attr}={old}) "
                    "cannot be stretched to the new length. Resume with max_epochs="
                    f"{old_epochs}, or start a new run (resume=False) that loads the model weights."
                )
            setattr(obj, attr, lengths[old])
            lrs = closed_form()
            for group, lr in zip(obj.optimizer.param_groups, lrs):
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(float(lr))
                else:
                    group["lr"] = float(lr)
            obj._last_lr = [float(lr) for lr in lrs]
            logger.warning(
                f"checkpoint '{path}' was written by a run of max_epochs={old_epochs}, this run has "
                f"max_epochs={new_epochs}: LR scheduler '{name}' ({type(obj).__name__}) stretched from "
                f"{attr}={old} to {lengths[old]}; learning rate now {obj._last_lr}"
            )

    # ------------------------------------------------------------------------------ housekeeping
    def _cleanup_temp_files(self) -> None:
        if not self.save_dir.is_dir():
            return
        for p in self.save_dir.glob(f".{self.filename_prefix}_*{TMP_SUFFIX}"):
            logger.warning(f"removing incomplete checkpoint write '{p}' (interrupted before os.replace)")
            p.unlink(missing_ok=True)

    def _archive_previous_run(self) -> None:
        old = find_checkpoints(self.save_dir, self.filename_prefix)
        if not old:
            return
        dest = self.save_dir / "previous_runs" / time.strftime("%Y%m%d-%H%M%S")
        n = 0
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
        dest.mkdir(parents=True)
        for p in old:
            p.rename(dest / p.name)
        logger.warning(
            f"resume is off: moved {len(old)} checkpoint(s) of a previous run from '{self.save_dir}' to '{dest}'"
        )
