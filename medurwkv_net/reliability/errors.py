"""The package's exceptions under their former module name (they live in :mod:`medurwkv_net.core.errors`)."""

from __future__ import annotations

from medurwkv_net.core.errors import (
    DATA_ERRORS,
    USER_ERRORS,
    AtomicWriteError,
    CheckpointError,
    CorruptWeightsError,
    DatasetError,
    DataVerificationError,
    PretrainedUnavailableError,
    ReliabilityError,
    UnsafeWeightsError,
    WeightsIntegrityError,
    find_user_error,
    install_error_hook,
    running_monai_bundle,
)

__all__ = [
    "DATA_ERRORS",
    "USER_ERRORS",
    "AtomicWriteError",
    "CheckpointError",
    "CorruptWeightsError",
    "DataVerificationError",
    "DatasetError",
    "PretrainedUnavailableError",
    "ReliabilityError",
    "UnsafeWeightsError",
    "WeightsIntegrityError",
    "find_user_error",
    "install_error_hook",
    "running_monai_bundle",
]
