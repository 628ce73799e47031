"""What a resumable checkpoint holds besides the training objects, and its files: the RNG states, the
training progress (best metric, metric history), finding the checkpoint files and loading one safely."""

from __future__ import annotations

import logging
import math
import numbers
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from medurwkv_net.core.errors import CheckpointError, CorruptWeightsError, UnsafeWeightsError
from medurwkv_net.core.weights import safe_torch_load

__all__ = [
    "FORMAT",
    "TrainingProgress",
    "capture_rng_state",
    "find_checkpoints",
    "load_checkpoint_file",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

FORMAT = "medurwkv_net.resumable_checkpoint/1"


# ----------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict:
    """RNG states of python, numpy, torch (and every CUDA device) as tensors and plain types."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": gauss},
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npd = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npd["bit_generator"],
            "state": {"key": npd["key"].numpy().astype(np.uint32), "pos": npd["pos"]},
            "has_gauss": npd["has_gauss"],
            "gauss": npd["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                f"checkpoint holds CUDA RNG states for {len(cuda)} devices, this machine has "
                f"{torch.cuda.device_count()}: CUDA RNG not restored"
            )


# ---------------------------------------------------------------------------------- progress tracker
class TrainingProgress:
    """Stateful record of the best metric, the per-epoch metric history and the RNG states.

    Args:
        metric_name: the metric whose best value is kept (``None``: no best metric).
        mode: ``"max"`` or ``"min"``: which values of the metric are better.
    """

    def __init__(self, metric_name: str | None = None, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric_name = metric_name
        self.mode = mode
        self.best_metric: float | None = None
        self.best_metric_epoch: int = -1
        self.history: dict[int, dict] = {}
        self.restore_rng = True
        self.data_rng: list[dict] | None = None  # random states of the data pipeline, set before each save

    def record(self, epoch: int, iteration: int, metrics: Mapping[str, Any]) -> None:
        """Add an epoch's metrics to the history and update the best metric."""
        values = {}
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if isinstance(v, numbers.Number) and not isinstance(v, bool):
                values[str(k)] = float(v)  # type: ignore[arg-type]
        entry = self.history.setdefault(int(epoch), {"epoch": int(epoch), "iteration": int(iteration), "metrics": {}})
        entry["iteration"] = int(iteration)
        entry["metrics"].update(values)
        if self.metric_name is not None and self.metric_name in values:
            value = values[self.metric_name]
            if not math.isfinite(value):
                return
            better = (
                self.best_metric is None
                or (self.mode == "max" and value > self.best_metric)
                or (self.mode == "min" and value < self.best_metric)
            )
            if better:
                self.best_metric, self.best_metric_epoch = value, int(epoch)

    def history_list(self) -> list[dict]:
        """The history as a list, oldest epoch first."""
        return [self.history[e] for e in sorted(self.history)]

    def state_dict(self) -> dict:
        """The progress (and the RNG states) as tensors and plain types, for ``torch.save``."""
        return {
            "format": FORMAT,
            "metric_name": self.metric_name,
            "mode": self.mode,
            "best_metric": self.best_metric,
            "best_metric_epoch": self.best_metric_epoch,
            "history": self.history_list(),
            "rng": capture_rng_state(),
            "data_rng": self.data_rng,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` saved (the RNG states too, unless ``restore_rng`` is false)."""
        self.best_metric = state["best_metric"]
        self.best_metric_epoch = int(state["best_metric_epoch"])
        self.history = {int(h["epoch"]): dict(h) for h in state["history"]}
        if self.restore_rng and state.get("rng") is not None:
            restore_rng_state(state["rng"])
        self.data_rng = state.get("data_rng")


# ------------------------------------------------------------------------------------ file helpers
def find_checkpoints(save_dir: str | Path, filename_prefix: str = "checkpoint") -> list[Path]:
    """Checkpoint files ``<prefix>_<iteration>.pt`` in ``save_dir``, newest (highest iteration) first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(filename_prefix)}_(\d+)\.pt$")
    found = []
    for p in save_dir.iterdir():
        m = pattern.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def load_checkpoint_file(path: str | Path, required: tuple[str, ...] = ("trainer", "progress")) -> dict:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        ckpt = safe_torch_load(path, what="checkpoint")
    except (CorruptWeightsError, UnsafeWeightsError, FileNotFoundError) as e:
        raise CheckpointError(f"checkpoint '{path}' refused: {e}") from e
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(ckpt).__name__}, expected a dict of states")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint '{path}' lacks the entries {missing} (has {sorted(ckpt)}); "
            "it was not written by ResumableCheckpoint"
        )
    trainer = ckpt.get("trainer")
    if "trainer" in required and (not isinstance(trainer, Mapping) or "iteration" not in trainer):
        raise CheckpointError(f"checkpoint '{path}': entry 'trainer' has no 'iteration' ({trainer!r})")
    return dict(ckpt)
