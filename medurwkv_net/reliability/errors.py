"""Exceptions raised by :mod:`medurwkv_net.reliability`; every message names the file/key at fault."""
from __future__ import annotations


class ReliabilityError(RuntimeError):
    """Base class of the errors of this package."""


class WeightsIntegrityError(ReliabilityError, ValueError):
    """A weight file does not have the expected sha256 (tampered, truncated or wrong file)."""


class UnsafeWeightsError(ReliabilityError, ValueError):
    """A weight file contains pickled objects that ``torch.load(weights_only=True)`` refuses."""


class CorruptWeightsError(ReliabilityError, ValueError):
    """A weight file cannot be read (truncated, not a torch/safetensors file)."""


class CheckpointError(ReliabilityError):
    """A training checkpoint cannot be used (truncated, unreadable or missing entries)."""


class DataVerificationError(ReliabilityError, ValueError):
    """A dataset failed verification; ``.report`` holds the per-case results."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class AtomicWriteError(ReliabilityError, OSError):
    """A file could not be written (full disk, size limit, I/O error); the previous file is unchanged."""

    def __init__(self, message: str, errno_code: int | None = None):
        super().__init__(message)
        self.errno = errno_code
