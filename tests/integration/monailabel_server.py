"""Start and stop MONAI Label's own server (``monailabel start_server``) for the check, offline and on CPU."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def monailabel_cli() -> Path:
    """The ``monailabel`` command of the environment this check runs in."""
    cli = Path(sys.executable).parent / "monailabel"
    if not cli.is_file():
        raise FileNotFoundError(f"{cli} not found: run the check with the python of an environment that has "
                                "monailabel installed")
    return cli


def download_app(output: Path) -> Path:
    """``monailabel apps --download --name monaibundle``: copies the sample app that the installed monailabel
    ships (nothing is downloaded). Returns the app folder."""
    subprocess.run([str(monailabel_cli()), "apps", "--download", "--name", "monaibundle", "--output", str(output)],
                   check=True, env=_env(), stdout=subprocess.DEVNULL)
    app = output / "monaibundle"
    if not (app / "main.py").is_file():
        raise FileNotFoundError(f"'monailabel apps --download --name monaibundle' did not write {app / 'main.py'}")
    return app


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app: Path, studies: Path, models: list[str], log: Path,
                   timeout: float = 300.0) -> Iterator[str]:
    """Run ``monailabel start_server`` on 127.0.0.1 until the block ends; yields its URL.

    The server uses the bundle folders in ``app/model`` (``zoo_source`` other than ``monaihosting``: no model
    zoo listing), no SAM2 tasks (their weights come from the Hugging Face Hub), no Hub downloads
    (``HF_HUB_OFFLINE``) and no GPU. It is ready when ``/info/`` answers; the server and every process it
    started (trainings) are killed when the block ends, whatever happens in it.

    Args:
        app: The monaibundle app folder.
        studies: The datastore folder.
        models: Bundle names in ``app/model`` to serve and train.
        log: File for the server's output.
        timeout: Seconds to wait for ``/info/``.

    Raises:
        RuntimeError: The server exited or did not answer within ``timeout``; the message ends with its log.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(monailabel_cli()), "start_server", "--app", str(app), "--studies", str(studies),
           "--conf", "models", ",".join(models), "--conf", "zoo_source", "github", "--conf", "sam2", "false",
           "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        # a session of its own: the server, its trainings and their workers are killed together
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=log.parent,
                                  start_new_session=True)
    try:
        _wait_ready(server, url, log, timeout)
        yield url
    finally:
        _stop(server)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MONAILABEL_PYEXE=sys.executable, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    return env


def _wait_ready(server: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"monailabel start_server exited with code {server.returncode}\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/info/", timeout=10) as response:
                if response.status == 200:
                    print(f"MONAI Label server ready at {url} after {time.monotonic() - start:.0f} s")
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"monailabel start_server did not answer {url}/info/ within {timeout:.0f} s\n{log_tail(log)}")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # trainings the server started, if any are left
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def log_tail(log: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of the server's log, framed for an error message."""
    text = log.read_text(errors="replace").splitlines() if log.is_file() else ["(no log)"]
    return f"--- last {lines} lines of {log} ---\n" + "\n".join(text[-lines:])
