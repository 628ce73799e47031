"""Reliability: verified datasets, resumable atomic checkpoints, safe weights, robust inference.

Names are imported lazily (PEP 562) so that e.g. a training process using only the checkpoint handler
does not pay for importing MONAI's inferers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "atomic": [
        "AtomicDiskSaver",
        "atomic_save",
        "atomic_write",
        "atomic_write_bytes",
        "atomic_write_json",
        "atomic_write_text",
        "default_file_mode",
    ],
    "best_model": ["BestModelSaver", "non_finite_parameters"],
    "data_rng": ["capture_data_rng", "restore_data_rng"],
    "dataloader": ["TimeoutDataLoader"],
    "divergence": ["NonFiniteLossGuard", "TrainingDivergedError"],
    "checkpoint": [
        "ResumableCheckpoint",
        "TrainingProgress",
        "capture_rng_state",
        "restore_rng_state",
        "find_checkpoints",
        "load_checkpoint_file",
    ],
    "errors": [
        "AtomicWriteError",
        "CheckpointError",
        "CorruptWeightsError",
        "DataVerificationError",
        "DatasetError",
        "PretrainedUnavailableError",
        "ReliabilityError",
        "UnsafeWeightsError",
        "WeightsIntegrityError",
    ],
    "loading": ["SafeCheckpointLoader", "non_finite_entries"],
    "run_lock": ["RunLock", "RunLockedError"],
    "inference": [
        "SafeSimpleInferer",
        "SafeSliceInferer",
        "SafeSlidingWindowInferer",
        "sliding_window_predict",
        "validate_image",
    ],
    "verify_data": [
        "CaseReport",
        "Finding",
        "VerificationReport",
        "verify_datalist",
        "verify_datalist_file",
        "missing_class_warnings",
    ],
    "verify_handler": ["VerifyDataHandler"],
    "weights": ["file_sha256", "safe_load_weights", "safe_torch_load", "verify_sha256"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'medurwkv_net.reliability' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
