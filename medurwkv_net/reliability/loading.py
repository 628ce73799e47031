"""Loading a trained model in bundles: MONAI's ``CheckpointLoader`` behind the safe, verified reader.

:class:`SafeCheckpointLoader` reads the file with :func:`~medurwkv_net.reliability.safe_load_weights` first
(``weights_only``; an empty, truncated, junk or code-carrying file is refused with a message naming it) and
refuses weights holding NaN/Inf, then loads it the way MONAI's ``CheckpointLoader`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from medurwkv_net.core.weights import safe_load_weights

__all__ = ["SafeCheckpointLoader", "non_finite_entries"]


def non_finite_entries(state: Any, prefix: str = "") -> list[str]:
    """Keys of the floating-point tensors holding NaN/Inf in a (nested) state dict."""
    bad: list[str] = []
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            bad.append(prefix or "<tensor>")
    elif isinstance(state, Mapping):
        for k, v in state.items():
            bad += non_finite_entries(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            bad += non_finite_entries(v, f"{prefix}[{i}]")
    return bad


class SafeCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` (same arguments) that verifies the file before loading it.

    Raises:
        FileNotFoundError: the file does not exist (train the bundle first, or point ``ckpt_dir`` at it).
        UnsafeWeightsError / CorruptWeightsError: the file cannot be loaded safely (message names it).
        RuntimeError: the weights hold NaN/Inf, or do not fit the network (message names the file).
    """

    def __call__(self, engine: Engine) -> None:
        """Load the checkpoint into the objects (safely: ``weights_only``), naming the file on failure."""
        try:
            state = safe_load_weights(self.load_path, map_location="cpu")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}; train the bundle first (it writes models/model.pt) or point ckpt_dir at a trained model"
            ) from e
        bad = non_finite_entries(state)
        if bad:
            raise RuntimeError(
                f"refusing to load '{self.load_path}': {len(bad)} weight tensor(s) hold NaN/Inf values (first: "
                f"{bad[0]}); the file comes from a diverged training or is corrupt, use another checkpoint"
            )
        del state
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"'{self.load_path}' does not fit the network of this config: {first}") from e
