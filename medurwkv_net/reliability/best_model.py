"""Best-model saving that survives kills, full disks and resumed runs.

:class:`BestModelSaver` is MONAI's :class:`~monai.handlers.CheckpointSaver` (``save_key_metric=True``) with
three changes:

* the file (``models/model.pt``) is written through :func:`~medurwkv_net.reliability.atomic.atomic_save`:
  a kill or a full disk during the write leaves the previous best model in place (MONAI deletes it first
  and writes in place);
* a non-finite metric never counts as an improvement, and weights holding NaN/Inf are never saved;
* it is stateful: :class:`~medurwkv_net.reliability.ResumableCheckpoint` saves its record (best value,
  epoch, SHA-256 of the file) with every checkpoint and restores it on resume, so a resumed run only
  replaces the best model with a better one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver

from .atomic import TMP_SUFFIX, AtomicDiskSaver
from medurwkv_net.core.weights import file_sha256

if TYPE_CHECKING:
    from ignite.handlers import Checkpoint

__all__ = ["BestModelSaver", "non_finite_parameters"]

logger = logging.getLogger(__name__)


def non_finite_parameters(objects: Mapping[str, Any]) -> list[str]:
    """Names ``<object>.<key>`` of the floating-point state entries of ``objects`` holding NaN or Inf."""
    bad = []
    for name, obj in objects.items():
        if not hasattr(obj, "state_dict"):
            continue
        state = obj.state_dict()
        if not isinstance(state, Mapping):
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"{name}.{key}")
    return bad


class BestModelSaver(CheckpointSaver):
    """Save ``save_dict`` to ``save_dir/key_metric_filename`` whenever the evaluator's key metric improves.

    Args:
        save_dir: folder of the file (``models``).
        save_dict: objects to save, e.g. ``{"model": network}`` (a single entry is saved as its plain state
            dict, as MONAI does, so ``CheckpointLoader`` and ``torch.load`` read it directly).
        key_metric_filename: file name of the best model.
        key_metric_name: metric to track; default the evaluator's key metric.
        key_metric_negative_sign: the metric is an error (smaller is better).
        before_replace: test hook ``f(tmp_path, final_path)`` called before the file is moved into place.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        key_metric_filename: str = "model.pt",
        key_metric_name: str | None = None,
        key_metric_negative_sign: bool = False,
        before_replace: Callable[[Path, Path], None] | None = None,
    ):
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            save_key_metric=True,
            key_metric_name=key_metric_name,
            key_metric_filename=key_metric_filename,
            key_metric_negative_sign=key_metric_negative_sign,
        )
        self.path = Path(save_dir) / key_metric_filename
        self.key_metric_name = key_metric_name
        self.negative_sign = key_metric_negative_sign
        self._best_checkpoint.save_handler = AtomicDiskSaver(
            save_dir, create_dir=True, filename=key_metric_filename, before_replace=before_replace
        )
        self.best_metric: float | None = None
        self.best_epoch: int = -1
        self.sha256: str | None = None

    @property
    def _best_checkpoint(self) -> Checkpoint:
        """ignite's ``Checkpoint`` of the key metric (always made: ``save_key_metric=True``)."""
        checkpoint = self._key_metric_checkpoint
        assert checkpoint is not None
        return checkpoint

    def attach(self, engine: Engine) -> None:
        """Attach to the evaluator; remove temporary files of a write that a killed run left unfinished."""
        for tmp in sorted(self.path.parent.glob(f".{self.path.name}.*{TMP_SUFFIX}")):
            logger.warning(f"removing '{tmp}', an unfinished write of '{self.path}' (the run writing it was stopped)")
            tmp.unlink(missing_ok=True)
        super().attach(engine)

    def metrics_completed(self, engine: Engine) -> None:
        """Save the model if the key metric improved (finite metric and finite weights only)."""
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        value = engine.state.metrics.get(name) if name is not None else None
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not math.isfinite(float(value)):
            logger.warning(
                f"{name} is {value} at epoch {engine.state.epoch}: not a result, '{self.path}' is not updated"
            )
            return
        checkpoint = self._best_checkpoint
        saved_before = list(checkpoint._saved)
        priority = (-1 if self.negative_sign else 1) * float(value) if value is not None else None
        would_save = priority is not None and (not saved_before or saved_before[0].priority < priority)
        if would_save:
            bad = non_finite_parameters(self.save_dict)
            if bad:
                raise RuntimeError(
                    f"refusing to save the best model '{self.path}' at epoch {engine.state.epoch}: "
                    f"{len(bad)} weight tensor(s) hold NaN/Inf values (first: {bad[0]}). Training diverged; "
                    "lower the learning rate or check the data. The previous best model is unchanged."
                )
        super().metrics_completed(engine)
        if list(checkpoint._saved) != saved_before:
            assert value is not None  # ignite saves only for a metric value
            self.best_metric = float(value)
            self.best_epoch = int(engine.state.epoch)
            self.sha256 = file_sha256(self.path)
            logger.info(f"best model so far ({name}={self.best_metric:.4f}, epoch {self.best_epoch}): {self.path}")

    def state_dict(self) -> dict:
        """The record of the best model: ignite's tracking list, best value and epoch, SHA-256 of the file."""
        return {
            "checkpoint": self._best_checkpoint.state_dict(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "sha256": self.sha256,
            "filename": self.path.name,
        }

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore the record saved by :meth:`state_dict`, checking that the file still holds that model.

        Args:
            state_dict: the record. If the file is missing the record is dropped (the next validation writes
                a new best model); if the file differs from the recorded one (written after that checkpoint,
                or replaced) it is kept and only a better model than the recorded best replaces it.
        """
        best, sha = state_dict.get("best_metric"), state_dict.get("sha256")
        epoch = int(state_dict.get("best_epoch", -1))
        if sha is None:
            return
        if not self.path.is_file():
            logger.warning(
                f"the best model of this run (epoch {epoch}, {best:.4f}) should be '{self.path}', which is missing; "
                "the next validation writes a new best model"
            )
            return
        actual = file_sha256(self.path)
        if actual != sha:
            logger.warning(
                f"'{self.path}' is not the best model recorded in the checkpoint (epoch {epoch}, {best:.4f}): it "
                "was written after that checkpoint (a run stopped between the two writes) or replaced. It is "
                f"kept; only a model better than {best:.4f} replaces it"
            )
        self._best_checkpoint.load_state_dict(state_dict["checkpoint"])
        self.best_metric, self.best_epoch, self.sha256 = best, epoch, actual
        logger.info(f"best model '{self.path}' (epoch {epoch}, {best:.4f}) kept: only a better one replaces it")
