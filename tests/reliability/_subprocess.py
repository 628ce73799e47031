"""Launch a training script in a subprocess, SIGKILL it when a line appears (shared by the kill tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def launch(script, *args, kill_on=None, timeout=240):
    """Run ``script args``; if a stdout line starts with ``kill_on``, SIGKILL the child right then.

    Returns ``(returncode, stdout lines, the line that triggered the kill or None, stderr)``.
    """
    cmd = [sys.executable, str(script), *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines, killed_at = [], None
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if kill_on and line.startswith(kill_on):
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = line.strip()
                break
        proc.wait()
        err = proc.stderr.read()
    finally:
        watchdog.cancel()
        proc.stdout.close()
        proc.stderr.close()
    return proc.returncode, lines, killed_at, err
