"""Atomic, durable file writes.

A write goes to a temporary file in the destination folder, is flushed and fsync'ed, then moved over the
destination with ``os.replace`` (atomic on POSIX and Windows) and the folder entry is fsync'ed. A crash at
any point leaves either the old file or the new one, never a partial file under the final name. A write
that fails (full disk, file size limit, I/O error) raises :class:`AtomicWriteError` naming the file and the
free space of its file system; the previous file is left as it was.

Every file the package writes (checkpoints, the best model, curves, overlays, prepared data, datalists,
reports) goes through :func:`atomic_write`. Files get the mode ``open()`` would give them (``0o666``
minus the process umask), not the owner-only mode of the temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from .errors import AtomicWriteError

__all__ = [
    "AtomicWriteError",
    "TMP_SUFFIX",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "default_file_mode",
]

TMP_SUFFIX = ".tmp"

BeforeReplaceHook = Callable[[Path, Path], None]

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def default_file_mode() -> int:
    """Mode of a new file as ``open()`` creates it: ``0o666`` minus the process umask."""
    try:
        with open("/proc/self/status") as f:  # reading the umask without changing it (thread safe)
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _errno_of(err: BaseException) -> int | None:
    e: BaseException | None = err
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _write_failure(path: Path, e: BaseException) -> AtomicWriteError:
    try:
        free = shutil.disk_usage(path.parent).free
        free_text = f"{free / 2**20:.1f} MiB free"
    except OSError:
        free, free_text = None, "free space unknown"
    code = _errno_of(e)
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if code in _DISK_FULL or (free is not None and free < 2**20):
        cause = "the disk is full or a size limit was reached"
        advice = "free some space or write to another folder, then run again"
    else:
        cause = "the write failed"
        advice = "check the folder's free space and permissions, then run again"
    return AtomicWriteError(
        f"could not write '{path}': {cause} ({type(e).__name__}: {detail}; {free_text} on its file system). "
        f"The previous '{path.name}', if any, is unchanged; {advice}.",
        code,
    )


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], Any],
    before_replace: BeforeReplaceHook | None = None,
) -> Path:
    """Write ``path`` atomically and durably: ``write(fileobj)`` fills a temporary file in the same folder.

    Args:
        path: destination file; its folder is created if missing.
        write: callable writing the content to the binary file object it is given.
        before_replace: ``f(tmp_path, final_path)`` called once the temporary file is complete and synced,
            before it is moved into place (fault-injection tests).

    Returns:
        the destination path.

    Raises:
        AtomicWriteError: the content could not be written (full disk, I/O error); the old file is intact.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=folder)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            raise _write_failure(path, e) from e
        if before_replace is not None:
            before_replace(tmp, path)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return path


def atomic_save(
    obj: Any,
    path: str | os.PathLike,
    save_func: Callable[..., None] = torch.save,
    before_replace: BeforeReplaceHook | None = None,
    **kwargs: Any,
) -> Path:
    """Serialize ``obj`` with ``save_func(obj, fileobj, **kwargs)`` to ``path`` with :func:`atomic_write`.

    Args:
        obj: what to save (a state dict, a checkpoint dict).
        path: destination file.
        save_func: ``torch.save`` or a compatible function taking a file object.
        before_replace: see :func:`atomic_write`.
        kwargs: passed to ``save_func``.
    """
    return atomic_write(path, lambda f: save_func(obj, f, **kwargs), before_replace=before_replace)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` with :func:`atomic_write`."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` with :func:`atomic_write`."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))
