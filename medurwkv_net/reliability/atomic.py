"""Atomic, durable file writes and an ignite save handler built on them.

A write goes to a temporary file in the destination folder, is flushed and fsync'ed, then moved over the
destination with ``os.replace`` (atomic on POSIX and Windows) and the folder entry is fsync'ed. A crash at
any point leaves either the old file or the new one, never a partial file under the final name.
"""
from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import ignite.distributed as idist
import torch
from ignite.handlers import DiskSaver

__all__ = ["atomic_save", "AtomicDiskSaver", "TMP_SUFFIX"]

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"

BeforeReplaceHook = Callable[[Path, Path], None]


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(
    obj: Any,
    path: str | os.PathLike,
    save_func: Callable[..., None] = torch.save,
    before_replace: BeforeReplaceHook | None = None,
    **kwargs: Any,
) -> Path:
    """Serialize ``obj`` with ``save_func(obj, fileobj, **kwargs)`` to ``path`` atomically and durably.

    ``before_replace(tmp_path, final_path)`` is called after the temporary file is complete and synced and
    before it is moved into place (used by the fault-injection tests).
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            save_func(obj, f, **kwargs)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp, path)
        # mkstemp creates 0600 files; give the usual rw-r--r-- (respecting umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH) & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return path


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` whose atomic mode also flushes and fsyncs, and which deletes the files ignite
    rotates out only *after* the new checkpoint is safely in place (ignite removes them before writing,
    which leaves no checkpoint at all if the write is interrupted with ``n_saved=1``)."""

    def __init__(
        self,
        dirname: str | Path,
        create_dir: bool = True,
        require_empty: bool = False,
        save_on_rank: int = 0,
        before_replace: BeforeReplaceHook | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            dirname, atomic=True, create_dir=create_dir, require_empty=require_empty, save_on_rank=save_on_rank,
            **kwargs,
        )
        self.before_replace = before_replace
        self._pending_removal: list[str] = []

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        atomic_save(checkpoint, path, save_func=func, before_replace=self.before_replace, **self.kwargs)
        pending, self._pending_removal = self._pending_removal, []
        for name in pending:
            if name == path.name:
                continue
            try:
                (self.dirname / name).unlink(missing_ok=True)
            except OSError as e:  # never fail a training step because an old file could not be removed
                logger.warning(f"could not remove old checkpoint '{self.dirname / name}': {e}")

    def remove(self, filename: str) -> None:
        if idist.get_rank() == self.save_on_rank:
            self._pending_removal.append(filename)
