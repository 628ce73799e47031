"""The package's exceptions; every message names the file/key at fault.

They live in the lowest room (``core``) so that every room can raise them; :mod:`medurwkv_net.reliability`
re-exports them under their former names.
"""

from __future__ import annotations

import os
import sys


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
    """A dataset failed verification; ``.report`` holds the per-case results.

    Args:
        message: the summary of the failed cases.
        report: the verification report.
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class DatasetError(ReliabilityError, ValueError):
    """A dataset release cannot be read or prepared (missing folder or mask, unreadable file, ...)."""


class AtomicWriteError(ReliabilityError, OSError):
    """A file could not be written (full disk, size limit, I/O error); the previous file is unchanged.

    Args:
        message: the file and the cause.
        errno_code: the ``errno`` of the underlying ``OSError``, if any (kept as ``.errno``).
    """

    def __init__(self, message: str, errno_code: int | None = None):
        super().__init__(message)
        self.errno = errno_code


class PretrainedUnavailableError(ReliabilityError, FileNotFoundError):
    """Released weights cannot be fetched: the Hub is offline or unreachable and the file is not in the cache,
    or the repository, file or revision does not exist. The message says where it looked and what to do."""


DATA_ERRORS = (DatasetError, DataVerificationError)
USER_ERRORS = DATA_ERRORS + (PretrainedUnavailableError,)


def find_user_error(err: BaseException) -> BaseException | None:
    """The first :data:`USER_ERRORS` instance in the chain of ``err`` (causes and contexts), or None."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, USER_ERRORS):
            return e
        seen.add(id(e))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def install_error_hook() -> None:
    """Make an uncaught :data:`USER_ERRORS` error (a bad release, a failed verification, pretrained weights
    that cannot be fetched) print one message, not a traceback through the config machinery:
    ``error: <message naming the file and what to do>``. ``MEDURWKV_DEBUG=1`` keeps the traceback. Other
    errors are left to the previous hook."""
    if getattr(sys.excepthook, "_medurwkv_user_errors", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        found = find_user_error(exc)
        if found is None or os.environ.get("MEDURWKV_DEBUG", "").strip() not in ("", "0"):
            return previous(exc_type, exc, tb)
        sys.stderr.write(f"error: {found}\n(set MEDURWKV_DEBUG=1 to see the traceback)\n")
        sys.stderr.flush()

    hook._medurwkv_user_errors = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def running_monai_bundle() -> bool:
    """True in a ``python -m monai.bundle ...`` (or ``torchrun -m monai.bundle``) process."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in ("monai.bundle.__main__", "monai.bundle")
