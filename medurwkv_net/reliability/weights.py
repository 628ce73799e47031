"""Safe weight loading: sha256 verification and ``weights_only`` / safetensors loading only.

Every failure names the file; a sha256 mismatch names both hashes. Nothing here ever un-pickles
arbitrary objects: ``.safetensors`` files go through :mod:`safetensors`, everything else through
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptWeightsError, UnsafeWeightsError, WeightsIntegrityError

__all__ = ["file_sha256", "verify_sha256", "safe_load_weights", "safe_torch_load"]

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (constant memory)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file '{path}' does not exist or is not a regular file")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> str:
    """Check that ``path`` has sha256 ``expected`` (hex, case-insensitive, optional ``sha256:`` prefix).

    Returns the hash. Raises :class:`WeightsIntegrityError` naming the file, its size and both hashes.
    """
    if not isinstance(expected, str) or not expected.strip():
        raise ValueError(f"expected sha256 for '{path}' must be a non-empty hex string, got {expected!r}")
    exp = expected.strip().lower()
    if exp.startswith("sha256:"):
        exp = exp[len("sha256:") :]
    if len(exp) != 64 or any(c not in "0123456789abcdef" for c in exp):
        raise ValueError(f"expected sha256 for '{path}' is not a 64-digit hex string: {expected!r}")
    actual = file_sha256(path)
    if actual != exp:
        size = Path(path).stat().st_size
        raise WeightsIntegrityError(
            f"sha256 mismatch for weight file '{path}' ({size} bytes): expected {exp}, got {actual}. "
            "The file is truncated, tampered with or not the registered release; it was not loaded."
        )
    return actual


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", what: str = "weight file") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the cause."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist or is not a regular file")
    size = path.stat().st_size
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(e)
        if "global" in detail.lower() or "reduce" in detail.lower() or "build" in detail.lower():
            # weights_only unpickler refuses any global/callable that is not an allow-listed type
            raise UnsafeWeightsError(
                f"refused to load {what} '{path}': it contains pickled objects that are not plain tensors/"
                f"containers and may try to run code (weights_only=True refused it). Details: {detail}"
            ) from e
        raise CorruptWeightsError(
            f"cannot read {what} '{path}' ({size} bytes): not a valid PyTorch/pickle file. Details: {detail}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CorruptWeightsError(
            f"cannot read {what} '{path}' ({size} bytes): truncated or not a PyTorch file. "
            f"Details: {_first_line(e)}"
        ) from e


def safe_load_weights(
    path: str | os.PathLike, expected_sha256: str | None = None, map_location: Any = "cpu"
) -> Any:
    """Load a weight file safely: optional sha256 check first, then safetensors or ``weights_only`` torch.load.

    Returns the loaded object (a state dict or a container of tensors). Raises
    :class:`WeightsIntegrityError`, :class:`UnsafeWeightsError` or :class:`CorruptWeightsError`.
    """
    path = Path(path)
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"weight file '{path}' does not exist or is not a regular file")
        try:
            device = map_location if isinstance(map_location, str) else "cpu"
            return load_file(str(path), device=device)
        except Exception as e:  # SafetensorError has no stable import path across versions
            raise CorruptWeightsError(
                f"cannot read safetensors file '{path}' ({path.stat().st_size} bytes): {_first_line(e)}"
            ) from e
    return safe_torch_load(path, map_location=map_location)


def _unpickler_detail(e: BaseException) -> str:
    """The specific reason from torch's weights-only unpickler message (its first lines are generic)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip().splitlines()
        return rest[0].strip() if rest else text
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
