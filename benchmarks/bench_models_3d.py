"""CPU speed / memory of volumetric MedURWKV-tiny vs MONAI SwinUNETR (feature_size 48) and UNETR (all 3D).

For each model and cubic volume size (batch 1, 1 input channel, 2 output channels) it measures, in a fresh
subprocess per (model, size) so that one model's allocations cannot hide another's peak:

- ``fwd_s``: inference forward time (``torch.no_grad``, eval mode), best of ``--repeats``;
- ``train_s``: forward + backward time (train mode, loss = mean of the output), best of ``--repeats``;
- ``fwd_mem_mb`` / ``train_mem_mb``: peak resident memory above the level just before the call
  (:class:`bench_models.PeakRSS`; the subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensor
  memory leaves the resident set).

Each subprocess caps its data segment at ``--mem_cap_gb`` (``RLIMIT_DATA``): an allocation beyond it fails
with an error that is recorded (``error``) instead of pushing the shared machine into the OOM killer.
MedURWKV and SwinUNETR get one untimed 64^3 warm-up forward; UNETR (fixed input size) gets none.

Writes ``<out>/bench_models_3d.md`` and ``bench_models_3d.json`` and prints the table and the targets:
MedURWKV-tiny peak memory (forward+backward) below SwinUNETR fs48 at 128^3, and MedURWKV-tiny memory growing
linearly with the voxel count (ratio of the memory growth to the voxel growth between the two largest sizes;
1.0 = linear, 1.78 = what a quadratic-in-tokens term would give from 96^3 to 128^3).

Usage::

    python benchmarks/bench_models_3d.py                    # sizes 96 128, 1 repeat
    python benchmarks/bench_models_3d.py --sizes 64 96 --models medurwkv unetr
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import PeakRSS  # noqa: E402  (the same memory probe as the 2D benchmark)

LABELS = {"medurwkv": "MedURWKV-tiny 3D", "swinunetr48": "SwinUNETR fs48", "unetr": "UNETR"}


def build(name: str, size: int) -> torch.nn.Module:
    from monai.networks.nets import UNETR, SwinUNETR

    from medurwkv_net import MedURWKV

    if name == "medurwkv":
        return MedURWKV(spatial_dims=3, in_channels=1, out_channels=2, img_size=96, encoder="tiny", feature_size=48)
    if name == "swinunetr48":
        return SwinUNETR(in_channels=1, out_channels=2, feature_size=48, spatial_dims=3)
    if name == "unetr":
        return UNETR(in_channels=1, out_channels=2, img_size=(size, size, size), spatial_dims=3)
    raise ValueError(f"unknown model {name!r}; choose from {sorted(LABELS)}")


def worker(name: str, size: int, repeats: int, cap_gb: float) -> Dict[str, object]:
    """Measure one (model, size) in this process; returns the row."""
    cap = int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    torch.manual_seed(0)
    model = build(name, size)
    row: Dict[str, object] = {"model": name, "label": LABELS[name], "size": size,
                              "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    x = torch.randn(1, 1, size, size, size)
    row.update({"fwd_s": None, "train_s": None, "fwd_mem_mb": None, "train_mem_mb": None})
    phase = "forward"
    try:
        model.eval()
        if name != "unetr":  # SwinUNETR needs 64^3 (its instance norms need more than one voxel at stride 32)
            with torch.no_grad():
                model(torch.randn(1, 1, 64, 64, 64))
        fwd: List[float] = []
        train: List[float] = []
        fwd_mem = train_mem = 0.0
        with torch.no_grad():
            for _ in range(repeats):
                with PeakRSS() as m:
                    t = time.perf_counter()
                    y = model(x)
                    fwd.append(time.perf_counter() - t)
                del y
                fwd_mem = max(fwd_mem, m.peak_mb)
        row.update({"fwd_s": min(fwd), "fwd_mem_mb": fwd_mem})
        phase = "forward+backward"
        model.train()
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            with PeakRSS() as m:
                t = time.perf_counter()
                model(x).float().mean().backward()
                train.append(time.perf_counter() - t)
            train_mem = max(train_mem, m.peak_mb)
        row.update({"train_s": min(train), "train_mem_mb": train_mem})
    except (RuntimeError, MemoryError) as e:  # e.g. the memory cap: keep what was measured, record the failure
        row["error"] = f"{phase} failed, {type(e).__name__} (memory cap {cap_gb:g} GiB): {str(e)[:100]}"
    return row


def run_one(name: str, size: int, repeats: int, cap_gb: float, threads: Optional[int]) -> Dict[str, object]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, str(size), "--repeats", str(repeats),
           "--mem_cap_gb", str(cap_gb)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"model": name, "label": LABELS[name], "size": size, "params_m": float("nan"), "fwd_s": None,
            "train_s": None, "fwd_mem_mb": None, "train_mem_mb": None,
            "error": f"worker exited with {proc.returncode}: {proc.stderr[-300:]}"}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--mem_cap_gb", type=float, default=12.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.mem_cap_gb)), flush=True)
        return 0
    load_start = os.getloadavg()[0]
    results = []
    sizes = sorted(args.sizes)
    for name in args.models:
        for size in sizes:
            row = run_one(name, size, args.repeats, args.mem_cap_gb, args.threads)
            results.append(row)
            print(json.dumps(row), flush=True)

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    lines = [
        f"CPU benchmark (3D), batch 1, 1 input channel, 2 classes; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, repeats={args.repeats} "
        f"(best); memory = peak RSS above the pre-call level, one subprocess per row, "
        f"data cap {args.mem_cap_gb:g} GiB. "
        f"1-min load average at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} (above the thread count, "
        "other processes shared the CPU and times are inflated; compare ratios within this run).",
        "",
        "| model | params (M) | size | forward (s) | fwd+bwd (s) | peak mem fwd (MiB) | peak mem fwd+bwd (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['label']} | {r['params_m']:.2f} | {r['size']}^3 | {fmt(r['fwd_s'], '.2f')} | "
                     f"{fmt(r['train_s'], '.2f')} | {fmt(r['fwd_mem_mb'], '.0f')} | {fmt(r['train_mem_mb'], '.0f')} |"
                     + (f" {r['error']}" if r.get("error") else ""))
    get = {(r["model"], r["size"]): r for r in results}
    lines.append("")
    big = sizes[-1]
    a, b = get.get(("medurwkv", big)), get.get(("swinunetr48", big))
    if a and b and a.get("train_mem_mb"):
        if b.get("train_mem_mb") and b.get("fwd_mem_mb"):
            ok = a["train_mem_mb"] < b["train_mem_mb"] and a["fwd_mem_mb"] < b["fwd_mem_mb"]
            lines.append(f"- Target 1 ({'met' if ok else 'NOT met'}): peak memory at {big}^3, MedURWKV-tiny "
                         f"{a['fwd_mem_mb']:.0f} / {a['train_mem_mb']:.0f} MiB (fwd / fwd+bwd) vs SwinUNETR fs48 "
                         f"{fmt(b['fwd_mem_mb'], '.0f')} / {b['train_mem_mb']:.0f} MiB "
                         f"(x{b['train_mem_mb'] / a['train_mem_mb']:.2f} less for training).")
        else:
            ok = b.get("fwd_mem_mb") is None or a["fwd_mem_mb"] < b["fwd_mem_mb"]
            lines.append(f"- Target 1 ({'met' if ok else 'NOT met'}): at {big}^3 SwinUNETR fs48 "
                         f"{b.get('error', '')[:60]} "
                         f"(forward peak {fmt(b.get('fwd_mem_mb'), '.0f')} MiB) where MedURWKV-tiny needed "
                         f"{a['fwd_mem_mb']:.0f} / {a['train_mem_mb']:.0f} MiB (fwd / fwd+bwd).")
    if len(sizes) >= 2:
        lo = sizes[-2]
        a, b = get.get(("medurwkv", lo)), get.get(("medurwkv", big))
        if a and b and a.get("train_mem_mb") and b.get("train_mem_mb"):
            voxels = (big / lo) ** 3
            gf, gt = b["fwd_mem_mb"] / a["fwd_mem_mb"], b["train_mem_mb"] / a["train_mem_mb"]
            ok = max(gf, gt) / voxels <= 1.15
            lines.append(f"- Target 2 ({'met' if ok else 'NOT met'}): MedURWKV-tiny peak memory "
                         f"{lo}^3 -> {big}^3 grows "
                         f"x{gf:.2f} (forward), x{gt:.2f} (forward+backward) for x{voxels:.2f} voxels "
                         f"(memory growth / voxel growth = {gf / voxels:.2f} / {gt / voxels:.2f}; linear = 1).")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_models_3d.md").write_text(table)
    (args.out / "bench_models_3d.json").write_text(json.dumps(results, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
