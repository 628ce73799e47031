"""benchmarks/gpu_check.sh: its dry run (the CPU kernel stands in for the GPU) passes, and a failing
check makes it exit non-zero."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("MEDURWKV_WKV_BACKEND", None)
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_dry_run_passes_every_check_it_can_run():
    proc = _run()
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = [ln for ln in out.splitlines() if re.match(r"(PASS|FAIL|SKIP) ", ln)]
    assert not [ln for ln in lines if ln.startswith("FAIL")]
    passed = {ln.split(":")[0] for ln in lines if ln.startswith("PASS")}
    for name in ("PASS build the cpu kernel", "PASS accuracy B=3 T=1 C=7 float32", "PASS extreme w and k ranges",
                 "PASS bitwise determinism", "PASS no host synchronisation", "PASS VRWKV reference features",
                 "PASS Med-URWKV training step, bf16 autocast", "PASS B*T*C > 2^31"):
        assert name in passed, name
    skipped = [ln for ln in lines if ln.startswith("SKIP")]
    assert all("needs a GPU" in ln for ln in skipped), skipped  # only what a CPU cannot do
    assert re.search(r"gpu_check: PASSED: \d+ passed, 0 failed, \d+ skipped", out)


def test_a_failing_check_fails_the_script():
    proc = _run("--only", "accuracy,extreme", "--tolerance-scale", "1e-12")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL accuracy B=2 T=15 C=33 float64" in proc.stdout
    assert "FAIL extreme w and k ranges" in proc.stdout
    assert re.search(r"gpu_check: FAILED: \d+ passed, \d+ failed", proc.stdout)
