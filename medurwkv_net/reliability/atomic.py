"""The ignite save handler built on the atomic file writes of :mod:`medurwkv_net.core.atomic`.

The write functions (:func:`atomic_write`, :func:`atomic_save`, ...) live in the ``core`` room so that every room
can use them; they are re-exported here under their former names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import ignite.distributed as idist
from ignite.handlers import DiskSaver

from medurwkv_net.core.atomic import (
    TMP_SUFFIX,
    BeforeReplaceHook,
    atomic_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    default_file_mode,
)
from medurwkv_net.core.errors import AtomicWriteError

__all__ = [
    "AtomicDiskSaver",
    "AtomicWriteError",
    "TMP_SUFFIX",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "default_file_mode",
]

logger = logging.getLogger(__name__)


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` writing through :func:`atomic_save`, which deletes the files ignite rotates out only
    *after* the new checkpoint is safely in place (ignite removes them before writing, which leaves no
    checkpoint at all if the write is interrupted with ``n_saved=1``).

    Args:
        dirname: folder of the files.
        create_dir: create ``dirname`` if missing.
        require_empty: refuse a folder holding ``.pt`` files.
        save_on_rank: the rank that writes in distributed runs.
        before_replace: see :func:`atomic_write`.
        filename: fixed file name used instead of the one ignite makes up (e.g. ``model.pt`` for the best
            model); the previous file of that name is replaced atomically, never deleted first.
        kwargs: passed to ``torch.save``.
    """

    def __init__(
        self,
        dirname: str | Path,
        create_dir: bool = True,
        require_empty: bool = False,
        save_on_rank: int = 0,
        before_replace: BeforeReplaceHook | None = None,
        filename: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            dirname,
            atomic=True,
            create_dir=create_dir,
            require_empty=require_empty,
            save_on_rank=save_on_rank,
            **kwargs,
        )
        self.before_replace = before_replace
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Save ``checkpoint`` under ``filename`` (or the fixed file name) atomically."""
        super().__call__(checkpoint, self.filename or filename, metadata)

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
        """Remove ``filename`` once the next checkpoint is in place (ignite calls this when it rotates a file)."""
        if idist.get_rank() == self.save_on_rank:
            self._pending_removal.append(self.filename or filename)
