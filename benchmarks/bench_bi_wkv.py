"""Bi-WKV speed and memory on CPU: compiled kernel vs pure-PyTorch linear path vs O(T^2) reference.

B=2, C=192, float32, T in {196, 1024, 4096, 16384, 65536}. For each (backend, T) a fresh worker
process measures forward and forward+backward wall time (median of repeats) and the peak resident
memory above the inputs (``ru_maxrss``), so one measurement's allocations cannot hide another's.
Writes ``benchmarks/results/bi_wkv_cpu.md`` and ``.json``; ratios are against the kernel measured
in the same run.

For the kernel, each worker also times what PyTorch's CPU allocator costs before the kernel runs:
allocating the op's outputs (y; y, dk, dv) and touching each 4 KiB page once. glibc hands blocks
above 32 MiB back to the OS when they are freed, so at T=65536 (50 MiB per output and batch row)
every call page-faults its outputs afresh, while at T <= 16384 freed blocks are reused.

    python benchmarks/bench_bi_wkv.py [--T 196 1024 ...] [--threads N] [--ref-max-T 1024] [--backends cpu ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "measure"]

B, C = 2, 192
DEFAULT_T = [196, 1024, 4096, 16384, 65536]
BACKENDS = ["cpu", "torch", "ref"]
RESULTS = Path(__file__).resolve().parent / "results"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _timeit(fn, budget_s: float = 3.0, max_reps: int = 7) -> float:
    """Median wall time of fn() in seconds: at least one run after warm-up, more while cheap."""
    times = []
    start = time.perf_counter()
    while len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 1:
            break
    return statistics.median(times)


def measure(backend: str, T: int, threads: int) -> dict:
    """Run in a worker process: time and peak memory of one backend at one T."""
    import torch

    from medurwkv_net.ops import bi_wkv

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(C, generator=g) * 8 - 5) / T
    u = (torch.rand(C, generator=g) * 8 - 5) / T
    k = torch.randn(B, T, C, generator=g) * 3
    v = torch.randn(B, T, C, generator=g) * 3
    gy = torch.randn(B, T, C, generator=g)
    if backend == "cpu":
        from medurwkv_net.ops import build

        build.load_extension()
    # warm-up on a short sequence (loads the kernel, fills caches) without raising the peak
    bi_wkv(w, u, k[:, :8], v[:, :8], backend=backend)
    base = _rss_mb()
    with torch.no_grad():
        fwd = _timeit(lambda: bi_wkv(w, u, k, v, backend=backend))
    peak_fwd = _rss_mb() - base
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]

    def fwd_bwd():
        y = bi_wkv(*ins, backend=backend)
        torch.autograd.grad(y, ins, gy)

    fb = _timeit(fwd_bwd)
    peak_fb = _rss_mb() - base
    row = {"backend": backend, "T": T, "fwd_s": fwd, "fwd_bwd_s": fb, "peak_fwd_mb": peak_fwd,
           "peak_fwd_bwd_mb": peak_fb}
    if backend == "cpu":

        def first_touch(n_outputs):
            for _ in range(n_outputs):
                torch.empty_like(k).view(-1)[::1024].zero_()  # one write per 4 KiB page

        row["alloc_fwd_s"] = _timeit(lambda: first_touch(1))
        row["alloc_fwd_bwd_s"] = _timeit(lambda: first_touch(3))
    return row


def _run_worker(backend: str, T: int, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, str(T), "--threads", str(threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "T": T, "error": f"timeout after {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return {"backend": backend, "T": T, "error": tail[0][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_ms(x):
    return "-" if x is None else f"{x * 1e3:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=DEFAULT_T)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    p.add_argument("--ref-max-T", type=int, default=1024, help="largest T for the O(T^2) reference")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per worker")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--worker", nargs=2, metavar=("BACKEND", "T"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(measure(a.worker[0], int(a.worker[1]), a.threads)))
        return 0

    import torch

    rows = []
    for T in a.T:
        for backend in a.backends:
            if backend == "ref" and T > a.ref_max_T:
                rows.append({"backend": backend, "T": T, "error": f"not run: O(T^2) memory above T={a.ref_max_T}"})
                continue
            r = _run_worker(backend, T, a.threads, a.timeout)
            rows.append(r)
            print(json.dumps(r), flush=True)
    by = {(r["backend"], r["T"]): r for r in rows}
    for r in rows:
        kern = by.get(("cpu", r["T"]), {})
        for key in ("fwd_s", "fwd_bwd_s"):
            if key in r and key in kern:
                r[f"{key}_vs_kernel"] = r[key] / kern[key]
    targets = {}
    if ("torch", 16384) in by and "fwd_bwd_s_vs_kernel" in by[("torch", 16384)]:
        targets["torch_over_kernel_fwd_bwd_T16384 (>= 20)"] = by[("torch", 16384)]["fwd_bwd_s_vs_kernel"]
    if ("ref", 1024) in by and "fwd_bwd_s_vs_kernel" in by[("ref", 1024)]:
        targets["ref_over_kernel_fwd_bwd_T1024 (>= 100)"] = by[("ref", 1024)]["fwd_bwd_s_vs_kernel"]
    k16, k64 = by.get(("cpu", 16384), {}), by.get(("cpu", 65536), {})
    if "fwd_bwd_s" in k16 and "fwd_bwd_s" in k64:
        targets["kernel_T65536_over_T16384_fwd_bwd (<= 5)"] = k64["fwd_bwd_s"] / k16["fwd_bwd_s"]
    if "fwd_s" in k16:
        targets["kernel_fwd_ms_T16384 (~19 or less)"] = k16["fwd_s"] * 1e3

    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": a.threads,
           "cpu": platform.processor() or platform.machine(), "B": B, "C": C, "dtype": "float32",
           "load_avg_1min": os.getloadavg()[0]}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bi_wkv_cpu.json").write_text(json.dumps({"env": env, "rows": rows, "targets": targets}, indent=2))
    lines = [
        "# Bi-WKV on CPU: kernel vs PyTorch linear path vs O(T^2) reference",
        "",
        f"B={B}, C={C}, float32, {a.threads} threads, torch {torch.__version__}, "
        f"1-min load average at the end {env['load_avg_1min']:.1f}. Times are medians; "
        "memory is the peak resident growth above the inputs in a fresh process.",
        "",
        "`alloc` columns (kernel rows): time to allocate the op's outputs and touch each page once, "
        "part of the kernel's wall time (see the module docstring).",
        "",
        "| T | backend | fwd ms | fwd+bwd ms | fwd x kernel | fwd+bwd x kernel | peak fwd MB | peak fwd+bwd MB "
        "| alloc fwd ms | alloc fwd+bwd ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['T']} | {r['backend']} | {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['T']} | {r['backend']} | {_fmt_ms(r['fwd_s'])} | {_fmt_ms(r['fwd_bwd_s'])} | "
            f"{r.get('fwd_s_vs_kernel', 0):.1f} | {r.get('fwd_bwd_s_vs_kernel', 0):.1f} | "
            f"{r['peak_fwd_mb']:.0f} | {r['peak_fwd_bwd_mb']:.0f} | "
            f"{_fmt_ms(r.get('alloc_fwd_s'))} | {_fmt_ms(r.get('alloc_fwd_bwd_s'))} |"
        )
    lines += ["", "Targets:", ""] + [f"- {k}: {v:.2f}" for k, v in targets.items()]
    (a.out / "bi_wkv_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
