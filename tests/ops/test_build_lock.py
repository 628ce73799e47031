"""An interrupted kernel build never makes a later run hang: killed builds, stale torch ``lock`` files and
builds held by another live process, each run in fresh processes as users hit them."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medurwkv_net.ops import build
from medurwkv_net.ops.build_lock import LOCK_NAME, TORCH_LOCK_NAME, BuildLock, BuildLockTimeout


#: Runs the op in a new process and prints the kernel that ran and the error against the reference.
RUN_OP = textwrap.dedent(
    """
    import torch
    from medurwkv_net.ops import bi_wkv, bi_wkv_ref, build
    g = torch.Generator().manual_seed(0)
    w, u = torch.randn(16, generator=g) / 40, torch.randn(16, generator=g) / 40
    k, v = torch.randn(2, 40, 16, generator=g), torch.randn(2, 40, 16, generator=g)
    err = (bi_wkv(w, u, k, v) - bi_wkv_ref(w, u, k, v)).abs().max().item()
    kernel = build._LOADED.get(False)
    print("KERNEL", kernel.__file__ if kernel is not None else None)
    print("ERROR", err)
    """
)

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from medurwkv_net.ops.build_lock import BuildLock
    with BuildLock(Path(sys.argv[1])):
        print("HELD", flush=True)
        time.sleep(600)
    """
)


def _env(ext_root: Path, **extra: str) -> dict:
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(ext_root), PYTHONUNBUFFERED="1", **extra)
    env.pop("MEDURWKV_WKV_BACKEND", None)
    return env


def _run_op(ext_root: Path, timeout: float, **extra: str):
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", RUN_OP], env=_env(ext_root, **extra), capture_output=True,
                         text=True, timeout=timeout)
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("KERNEL", "ERROR")))
    assert float(lines["ERROR"]) < 1e-5, out.stdout
    return lines["KERNEL"], out.stderr, elapsed


def _hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], env=_env(folder.parent),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: ninja and the compiler too
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def built_cpu_dir() -> Path:
    """The CPU kernel's build folder of this torch (built once for the session)."""
    build.load_extension(cuda=False)
    return build.extension_dir(cuda=False)


def test_killed_build_then_new_process_builds_and_runs(tmp_path):
    ext_root = tmp_path / "ext"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from medurwkv_net.ops import build; build.load_extension()"],
        env=_env(ext_root), stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    ninja = None
    while time.monotonic() < deadline and ninja is None:  # wait until the compiler is running
        found = list(ext_root.glob("medurwkv_bi_wkv_cpu_*/build.ninja"))
        ninja = found[0] if found else None
        time.sleep(0.2)
    assert ninja is not None, "the build never started"
    time.sleep(3)
    assert proc.poll() is None, "the build finished before it could be interrupted"
    _kill(proc)
    folder = ninja.parent
    assert (folder / TORCH_LOCK_NAME).exists(), "the killed build should leave torch's lock file behind"
    assert not list(folder.glob("*.so.sha256"))

    kernel, stderr, elapsed = _run_op(ext_root, timeout=600)
    assert kernel is not None and kernel.startswith(str(folder)), (kernel, stderr[-2000:])
    # torch <= 2.13 waits for its lock file to disappear: it is removed; newer torch only leaves the file
    expected = "removed the stale build lock" if build.torch_lock_blocks_when_left() else "did not finish"
    notes = [line for line in stderr.splitlines() if "RuntimeWarning: medurwkv_net:" in line]
    assert len(notes) == 1 and expected in notes[0] and str(folder) in notes[0], stderr[-3000:]
    print(f"rebuild after the kill: {elapsed:.1f} s")  # a hang is caught by the subprocess timeout above


@pytest.mark.parametrize("with_marker", [True, False])
def test_stale_zero_byte_lock_beside_a_complete_library(tmp_path, built_cpu_dir, with_marker):
    """A zero-byte torch lock next to a finished library (with the marker of a finished build, or from an
    older build without it): the op loads the library and never waits on the lock (a wait on torch's lock
    file would never end: the subprocess timeout catches it)."""
    ext_root = tmp_path / "ext"
    folder = ext_root / built_cpu_dir.name
    shutil.copytree(built_cpu_dir, folder, ignore=shutil.ignore_patterns(TORCH_LOCK_NAME, LOCK_NAME))
    if not with_marker:
        for marker in folder.glob("*.sha256"):
            marker.unlink()
    (folder / TORCH_LOCK_NAME).write_bytes(b"")
    kernel, stderr, _ = _run_op(ext_root, timeout=300)
    assert kernel is not None and kernel.startswith(str(folder))
    # a warning where the file would have blocked (torch <= 2.13); newer torch ignores such a file
    assert stderr.count("removed the stale build lock") == int(build.torch_lock_blocks_when_left())
    assert "compiling" not in stderr  # nothing was rebuilt
    assert "waiting up to" not in stderr  # no wait on the package's own lock either


def test_build_held_by_a_live_process_times_out_to_the_torch_path(tmp_path, built_cpu_dir):
    ext_root = tmp_path / "ext"
    folder = ext_root / built_cpu_dir.name
    holder = _hold_lock(folder)
    try:
        kernel, stderr, _ = _run_op(ext_root, timeout=300, MEDURWKV_BUILD_LOCK_TIMEOUT="2")
    finally:
        _kill(holder)
    assert kernel == "None"  # the kernel could not be had: the PyTorch path computed the result
    assert f"process {holder.pid} on host" in stderr and "waiting up to 2 s" in stderr
    warning = [line for line in stderr.splitlines() if "kernel unavailable" in line]
    assert len(warning) == 1 and str(folder) in warning[0] and "python -m medurwkv_net build-ext" in warning[0]


def test_lock_released_by_the_death_of_its_owner(tmp_path):
    folder = tmp_path / "ext" / "medurwkv_bi_wkv_cpu_test"
    holder = _hold_lock(folder)
    try:
        assert f"process {holder.pid}" in BuildLock(folder).held_by_other()
        start = time.monotonic()
        with pytest.raises(BuildLockTimeout, match=f"process {holder.pid} on host .* after 1 s"):
            with BuildLock(folder, timeout=1):
                pass
        assert time.monotonic() - start >= 1  # it waited for the live owner, as long as it was told
    finally:
        _kill(holder)
    assert BuildLock(folder).held_by_other() is None
    with BuildLock(folder, timeout=0) as lock:  # taken at once: the kernel released the dead owner's lock
        assert str(os.getpid()) in lock.path.read_text()


def test_lock_timeout_variable_is_checked(monkeypatch):
    monkeypatch.setenv("MEDURWKV_BUILD_LOCK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MEDURWKV_BUILD_LOCK_TIMEOUT.*'soon'"):
        BuildLock(Path("unused"))


def test_build_ext_clean_removes_damaged_folders_but_not_one_in_use(tmp_path, built_cpu_dir):
    ext_root = tmp_path / "ext"
    damaged = ext_root / "medurwkv_bi_wkv_cpu_0123456789ab"
    damaged.mkdir(parents=True)
    (damaged / TORCH_LOCK_NAME).write_bytes(b"")
    current = ext_root / built_cpu_dir.name
    shutil.copytree(built_cpu_dir, current)
    cli = [sys.executable, "-m", "medurwkv_net", "build-ext", "--cuda=False", "--clean"]
    holder = _hold_lock(current)
    try:
        refused = subprocess.run(cli, env=_env(ext_root), capture_output=True, text=True, timeout=120)
    finally:
        _kill(holder)
    assert refused.returncode != 0 and f"process {holder.pid}" in refused.stderr and str(current) in refused.stderr
    assert current.exists()
    done = subprocess.run(cli, env=_env(ext_root), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "removed 2 CPU build folder(s)" in done.stdout and str(damaged) in done.stdout
    assert not damaged.exists() and f"built the CPU kernel: {current}" in done.stdout
    assert list(current.glob("*.so.sha256"))
