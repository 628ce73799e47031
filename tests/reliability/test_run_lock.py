"""RunLock: one training per output folder; a stale lock (dead pid) is taken over with a warning."""
import json
import logging
import signal
import socket
import subprocess
import sys

import pytest
from ignite.engine import Engine

from medurwkv_net.reliability import RunLock, RunLockedError

HOLDER = """
import sys, time
from medurwkv_net.reliability import RunLock
RunLock(sys.argv[1]).acquire()
print("LOCKED", flush=True)
time.sleep(120)
"""


def test_second_run_fails_at_once_then_takes_over_the_lock_of_a_killed_run(tmp_path, caplog):
    folder = tmp_path / "models"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(RunLockedError) as info:
            RunLock(folder).acquire()
        msg = str(info.value)
        assert f"'{folder}' is in use by another training run: pid {holder.pid} on this host" in msg
        assert f"lock file '{folder / 'run.lock'}'" in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    with caplog.at_level(logging.WARNING):
        lock = RunLock(folder).acquire()
    assert f"taking over the lock '{folder / 'run.lock'}' of an earlier run (pid {holder.pid}" in caplog.text
    assert json.loads((folder / "run.lock").read_text())["pid"] == lock._me["pid"]
    lock.release()
    assert not (folder / "run.lock").exists()


def test_lock_of_another_host_is_not_taken(tmp_path):
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "other-node", "started": "x"}))
    with pytest.raises(RunLockedError, match=r"in use by a training run on host 'other-node' \(pid 1"):
        RunLock(tmp_path).acquire()
    assert socket.gethostname() != "other-node"


def test_lock_is_released_when_the_trainer_completes_and_reentrant_in_one_process(tmp_path):
    lock = RunLock(tmp_path)
    trainer = Engine(lambda e, b: None)
    lock.attach(trainer)
    assert (tmp_path / "run.lock").exists()
    RunLock(tmp_path).acquire()  # the same process: no conflict
    trainer.run([0, 1], max_epochs=1)
    assert not (tmp_path / "run.lock").exists()
    trainer.run([0, 1], max_epochs=2)  # running again takes it again, and releases it again
    assert not (tmp_path / "run.lock").exists()


def test_unreadable_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    (tmp_path / "run.lock").write_text("garbage")
    with caplog.at_level(logging.WARNING):
        RunLock(tmp_path).acquire().release()
    assert "it is unreadable" in caplog.text
