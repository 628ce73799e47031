"""Inter-process lock for a kernel build folder that never blocks without a word.

``torch.utils.cpp_extension.load`` guards a build folder with a plain ``lock`` file that it creates
and deletes; a build that is killed (Ctrl-C at the wrong moment, SIGKILL, a job's time limit) leaves
that file behind and every later ``load`` of the folder waits for it forever. This module puts an
advisory ``fcntl`` lock in front of it: the operating system releases the advisory lock when its owner
dies, so a process that holds it knows that no other process is building in the folder, and a
leftover torch ``lock`` file is stale.

The lock file (``medurwkv_build.lock`` in the build folder) records the owner's pid, host and start
time so that a waiting process can say who it waits for.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

try:  # POSIX; elsewhere only torch's own lock file guards the folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["BuildLock", "BuildLockTimeout", "LOCK_NAME", "TORCH_LOCK_NAME", "lock_timeout"]

LOCK_NAME = "medurwkv_build.lock"
TORCH_LOCK_NAME = "lock"
ENV_TIMEOUT = "MEDURWKV_BUILD_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_S = 900.0
_POLL_S = 0.5


class BuildLockTimeout(TimeoutError):
    """Another live process held the build folder for longer than the allowed wait."""


def lock_timeout() -> float:
    """Seconds to wait for another process's build: ``$MEDURWKV_BUILD_LOCK_TIMEOUT`` or 900.

    Raises:
        ValueError: the variable is not a non-negative number.
    """
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{ENV_TIMEOUT} must be a number of seconds >= 0, got {raw!r}")
    return value


def _describe_owner(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("time", 0)))
    return f"process {info['pid']} on host {info.get('host', '?')} (since {since})"


class BuildLock:
    """Exclusive, crash-safe lock on a build folder (a context manager).

    Args:
        folder: the build folder (created if missing).
        timeout: seconds to wait for another live owner; None reads :func:`lock_timeout`.
        what: words for the messages, e.g. ``"the Bi-WKV CPU kernel"``.

    Raises:
        BuildLockTimeout: on entry, when another live process still holds the folder after ``timeout``.

    Examples::

        with BuildLock(build_dir, what="the Bi-WKV CPU kernel"):
            ...  # build or load; no other cooperating process builds here meanwhile
    """

    def __init__(self, folder: Path, timeout: Optional[float] = None, what: str = "a kernel") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.timeout = lock_timeout() if timeout is None else float(timeout)
        self.what = what
        self._fd: Optional[int] = None

    @staticmethod
    def _try(fd: int) -> bool:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def __enter__(self) -> "BuildLock":
        if fcntl is None:  # pragma: no cover - Windows
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if not self._try(fd):
            print(
                f"medurwkv_net: {_describe_owner(self.path)} is building {self.what} in {self.folder}; "
                f"waiting up to {self.timeout:.0f} s for it ({ENV_TIMEOUT} sets the limit).",
                file=sys.stderr,
                flush=True,
            )
            deadline = time.monotonic() + self.timeout
            while not self._try(fd):
                if time.monotonic() >= deadline:
                    owner = _describe_owner(self.path)
                    os.close(fd)
                    self._fd = None
                    raise BuildLockTimeout(
                        f"{owner} still holds the build folder {self.folder} after {self.timeout:.0f} s"
                    )
                time.sleep(_POLL_S)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing the descriptor releases the fcntl lock
                self._fd = None

    def held_by_other(self) -> Optional[str]:
        """Who holds the folder right now, without waiting: a description of the owner, or None when free."""
        if fcntl is None or not self.path.exists():  # pragma: no cover - Windows
            return None
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return _describe_owner(self.path)
        finally:
            os.close(fd)
        return None
