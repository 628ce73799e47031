"""One training run per output folder: a lock file holding the owner's pid and host.

A second run on the same folder fails at once, naming the folder and the running process; a lock left by a
process that no longer exists (killed, machine rebooted) is taken over with a warning. The lock is released
when the trainer completes and when the process exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path

from ignite.engine import Engine, Events

from .atomic import atomic_write_json, default_file_mode
from medurwkv_net.core.errors import ReliabilityError

__all__ = ["RunLock", "RunLockedError"]

logger = logging.getLogger(__name__)


class RunLockedError(ReliabilityError):
    """The output folder is used by another running training."""


def _start_time(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot, Linux), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    now = _start_time(pid)
    return start is None or now is None or now == start


class RunLock:
    """Lock ``folder`` for this process (MONAI bundle handler: list it first in ``train#handlers``).

    Args:
        folder: the run's output folder (``models``); created if missing.
        filename: name of the lock file inside ``folder``.
        enabled: ``False`` turns the lock off (e.g. a shared read-only folder with an outside scheduler).

    The lock is taken by :meth:`acquire` (called by ``attach``, and by the bundles' ``initialize`` so that a
    second run fails before loading any data). It holds ``{"pid", "host", "start_time", "started"}``.
    """

    def __init__(self, folder: str | os.PathLike, filename: str = "run.lock", enabled: bool = True):
        self.folder = Path(folder)
        self.path = self.folder / filename
        self.enabled = bool(enabled)
        self.held = False
        self._me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_time": _start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and isinstance(data.get("pid"), int):
                return data
        except (OSError, ValueError):
            pass
        return {}

    def acquire(self) -> RunLock:
        """Take the lock; raise :class:`RunLockedError` if another live process holds it."""
        if not self.enabled or self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, default_file_mode())
        except FileExistsError:
            self._take_over()
        else:
            with os.fdopen(fd, "w") as f:
                json.dump(self._me, f)
                f.flush()
                os.fsync(f.fileno())
        self.held = True
        atexit.register(self.release)
        return self

    def _take_over(self) -> None:
        owner = self._read()
        pid, host = owner.get("pid"), owner.get("host")
        if owner and host == self._me["host"] and pid == self._me["pid"]:
            return  # this process already holds it
        if owner and host != self._me["host"]:
            raise RunLockedError(
                f"'{self.folder}' is in use by a training run on host '{host}' (pid {pid}, started "
                f"{owner.get('started')}; lock file '{self.path}'). Wait for it to finish or use another folder; "
                "if no run is active there any more, delete the lock file."
            )
        if owner and _alive(owner["pid"], owner.get("start_time")):  # _read: a non-empty owner has an int pid
            raise RunLockedError(
                f"'{self.folder}' is in use by another training run: pid {pid} on this host, started "
                f"{owner.get('started')} (lock file '{self.path}'). Wait for it to finish or stop it, or give this "
                "run another output folder (e.g. another bundle_root or ckpt_dir)."
            )
        what = f"pid {pid} on host '{host}' is not running" if owner else "it is unreadable"
        logger.warning(f"taking over the lock '{self.path}' of an earlier run ({what}): that run was stopped")
        atomic_write_json(self.path, self._me, indent=None)
        if self._read().get("pid") != self._me["pid"]:  # another process took it over at the same moment
            owner = self._read()
            raise RunLockedError(
                f"'{self.folder}' was just taken by another training run: pid {owner.get('pid')} on host "
                f"'{owner.get('host')}' (lock file '{self.path}'); give this run another output folder."
            )

    def release(self, engine: Engine | None = None) -> None:
        """Remove the lock file if this process holds it."""
        if not self.held:
            return
        owner = self._read()
        if owner.get("pid") == self._me["pid"] and owner.get("host") == self._me["host"]:
            self.path.unlink(missing_ok=True)
        self.held = False
        atexit.unregister(self.release)

    def attach(self, engine: Engine) -> None:
        """Take the lock now and release it when ``engine`` has completed (after its other handlers)."""
        self.acquire()
        engine.add_event_handler(Events.STARTED, self._release_last)

    def _release_last(self, engine: Engine) -> None:
        self.acquire()  # a trainer run again after completing takes the lock again
        if engine.has_event_handler(self.release, Events.COMPLETED):
            engine.remove_event_handler(self.release, Events.COMPLETED)
        engine.add_event_handler(Events.COMPLETED, self.release)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
