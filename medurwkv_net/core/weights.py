"""Safe weight loading: sha256 verification and ``weights_only`` / safetensors loading only.

Every failure names the file; a sha256 mismatch names both hashes. Nothing here ever un-pickles
arbitrary objects: ``.safetensors`` files go through :mod:`safetensors`, everything else through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptWeightsError, UnsafeWeightsError, WeightsIntegrityError

__all__ = ["file_sha256", "verify_sha256", "safe_load_weights", "safe_torch_load"]

_CHUNK = 1 << 20
# modules of the globals a state dict saved by torch.save legitimately refers to
_TORCH_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "numpy.")


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


def _scan_pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every global a pickle would import, found without running it (``pickletools``)."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - truncated or garbage pickles end the scan; what was found is kept
        pass
    return list(dict.fromkeys(found))


def _foreign_globals(path: Path, kind: str) -> list[str]:
    """Globals of the file's pickle(s) that are not part of torch's tensor serialisation."""
    blobs: list[bytes] = []
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        else:
            with open(path, "rb") as f:
                blobs = [f.read(_CHUNK * 64)]
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    names = [g for b in blobs for g in _scan_pickle_globals(b)]
    return [g for g in dict.fromkeys(names) if not g.startswith(_TORCH_GLOBALS)]


def _reason(e: BaseException) -> str:
    """The specific line of an exception message, without torch's generic advice (which suggests
    ``weights_only=False``, the one thing not to do with a file that was refused)."""
    skip = (
        "weights_only",
        "weights only load failed",
        "check the documentation",
        "please file an issue",
        "do it only if",
        "in pytorch 2.6",
    )
    lines = [ln.strip(" :") for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not any(k in ln.lower() for k in skip)]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", what: str = "weight file") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the cause.

    Args:
        path: the file.
        map_location: passed to ``torch.load``.
        what: what the file is, for the messages ("weight file", "checkpoint").

    Raises:
        FileNotFoundError: no such file.
        UnsafeWeightsError: the file holds pickled objects other than tensors and containers (it could run
            code); the message names them and never suggests ``weights_only=False``.
        CorruptWeightsError: the file is empty, truncated, or not a PyTorch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist or is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CorruptWeightsError(f"{what} '{path}' is empty (0 bytes): the write that made it was interrupted")
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] == b"PK\x03\x04":
        kind = "zip"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "pickle"
    elif head[257:262] == b"ustar":
        raise CorruptWeightsError(
            f"cannot read {what} '{path}' ({size} bytes): it is in PyTorch's legacy .tar format, which cannot be "
            "loaded safely; load it once in a trusted environment and save its state dict with a current PyTorch"
        )
    else:
        raise CorruptWeightsError(
            f"cannot read {what} '{path}' ({size} bytes): not a PyTorch file (a PyTorch file is a zip archive; "
            f"this one starts with {head[:8]!r})"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler and the zip reader raise many types for bad files
        foreign = _foreign_globals(path, kind)
        if foreign or "GLOBAL" in str(e):
            named = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise UnsafeWeightsError(
                f"refused to load {what} '{path}': it holds pickled Python objects that are not tensors or plain "
                f"containers ({named or _reason(e)}); loading them could run code. The file was not loaded: use "
                "a file that holds only weights (a state dict), from a source you trust."
            ) from e
        raise CorruptWeightsError(
            f"cannot read {what} '{path}' ({size} bytes): truncated or not a PyTorch weight file ({_reason(e)})"
        ) from e


def safe_load_weights(path: str | os.PathLike, expected_sha256: str | None = None, map_location: Any = "cpu") -> Any:
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
