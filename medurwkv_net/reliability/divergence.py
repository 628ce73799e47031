"""Stop a training whose loss is no longer finite, naming where and why it likely happened.

Like ignite's ``TerminateOnNan``, but it raises instead of terminating quietly: the run ends as failed,
no completion handler (final evaluation, export) runs on diverged weights, and the message names the
epoch, the iteration, the learning rate and the likely causes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["NonFiniteLossGuard", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def _default_output_transform(output: Any) -> Any:
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        output = output[0]  # MONAI decollates the trainer output: the loss is in every item
    if isinstance(output, Mapping):
        return output.get("loss")
    return output


def _non_finite_inputs(batch: Any) -> list[str]:
    """``'<key>' holds N NaN/Inf value(s)`` for the floating-point inputs of a batch (a dict, a tuple, or
    MONAI's decollated list of dicts)."""
    counts: dict[str, int] = {}
    items = batch if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Mapping) else [batch]
    for item in items:
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(item, Mapping):
            pairs = item.items()
        else:
            pairs = enumerate(item if isinstance(item, (list, tuple)) else [])
        for key, value in pairs:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                counts[str(key)] = counts.get(str(key), 0) + int((~torch.isfinite(value)).sum())
    return [f"'{k}' holds {n} NaN/Inf value(s)" for k, n in counts.items() if n]


class NonFiniteLossGuard:
    """Raise :class:`TrainingDivergedError` at the first iteration whose loss is NaN or infinite.

    Args:
        optimizer: the training optimizer; its learning rate is named in the message.
        output_transform: takes ``engine.state.output`` and returns the loss (default: the ``loss`` entry of
            the output dict, or of its first item for MONAI's decollated output).

    List it first in ``train#handlers``: it then runs before any handler that saves a checkpoint.
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None = None, output_transform: Callable | None = None):
        self.optimizer = optimizer
        self.output_transform = output_transform or _default_output_transform

    def attach(self, engine: Engine) -> None:
        """Check the loss after every iteration of ``engine``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        if isinstance(loss, torch.Tensor):
            if bool(torch.isfinite(loss).all()):
                return
            loss = loss.detach().flatten()[~torch.isfinite(loss.detach().flatten())][0].item()
        elif loss is None or math.isfinite(float(loss)):
            return
        state = engine.state
        in_epoch = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
        bad_inputs = _non_finite_inputs(getattr(state, "batch", None) or {})
        lr = None
        if self.optimizer is not None:
            lr = ", ".join(f"{g['lr']:g}" for g in self.optimizer.param_groups)
        if bad_inputs:
            causes = f"bad data: this batch's {'; '.join(bad_inputs)} (check the images and labels)"
        else:
            causes = (
                f"a learning rate too high for this network (this run: {lr or 'see the optimizer'}; try 10x lower) "
                "or bad data (extreme intensities, labels outside 0..num_classes-1)"
            )
        raise TrainingDivergedError(
            f"training diverged: the loss is {loss} at epoch {state.epoch}, iteration {state.iteration} "
            f"(iteration {in_epoch} of the epoch). Likely causes: {causes}. Training was stopped; no checkpoint or "
            "best model was written from these weights, resume from the last checkpoint after the fix."
        )
