"""CPU speed / memory comparison: MedURWKV-tiny vs MONAI SwinUNETR (fs 24, 48), UNETR and BasicUNet (all 2D).

For each model and image size (batch 1, 1 input channel, 2 output channels) it measures, in one process:

- ``fwd_s``: inference forward time (``torch.no_grad``, eval mode), best (minimum) of ``--repeats`` runs (the least
  disturbed by other processes);
- ``train_s``: forward + backward time (train mode, loss = mean of the output), best of ``--repeats`` runs;
- ``fwd_mem_mb`` / ``train_mem_mb``: peak resident memory above the level just before the call (sampled every
  millisecond from ``/proc/self/statm`` by a helper thread; falls back to ``ru_maxrss`` elsewhere). On Linux the
  script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every freed tensor buffer
  to the OS and the resident size follows the live tensor memory (otherwise freed memory stays resident and
  later peaks are hidden).

One untimed warm-up forward per model at the smallest size runs first (kernel compilation, allocator warm-up).
Writes ``<out>/bench_models.md`` (Markdown table), ``bench_models.json`` and ``bench_models.png``
(log-log time and memory against pixel count) and prints the table and the two project targets:
MedURWKV-tiny forward faster than SwinUNETR fs 48 at 512^2, and MedURWKV-tiny peak memory growing at most 4.5x
from 512^2 to 1024^2.

Usage::

    python benchmarks/bench_models.py                       # sizes 256 512 1024, 1 repeat
    python benchmarks/bench_models.py --sizes 256 512 --repeats 3 --models medurwkv swinunetr48
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Context manager sampling RSS in a thread; ``.peak_mb`` is the peak above the entry level."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak_mb = 0.0

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self._base = _rss_bytes()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._peak = max(self._peak, _rss_bytes())
        self._stop.set()
        self._thread.join()
        self.peak_mb = (self._peak - self._base) / 2**20


def build_models() -> Dict[str, Callable[[int], torch.nn.Module]]:
    from monai.networks.nets import UNETR, BasicUNet, SwinUNETR

    from medurwkv_net import MedURWKV

    return {
        "medurwkv": lambda s: MedURWKV(spatial_dims=2, in_channels=1, out_channels=2, img_size=256, encoder="tiny"),
        "swinunetr24": lambda s: SwinUNETR(in_channels=1, out_channels=2, feature_size=24, spatial_dims=2),
        "swinunetr48": lambda s: SwinUNETR(in_channels=1, out_channels=2, feature_size=48, spatial_dims=2),
        "unetr": lambda s: UNETR(in_channels=1, out_channels=2, img_size=(s, s), spatial_dims=2),
        "basicunet": lambda s: BasicUNet(spatial_dims=2, in_channels=1, out_channels=2),
    }


LABELS = {
    "medurwkv": "MedURWKV-tiny",
    "swinunetr24": "SwinUNETR fs24",
    "swinunetr48": "SwinUNETR fs48",
    "unetr": "UNETR",
    "basicunet": "BasicUNet",
}


def _available_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


#: models whose memory grows with the square of the pixel count (global self-attention over all patches)
QUADRATIC = {"unetr"}


def measure(model: torch.nn.Module, size: int, repeats: int, skip_train: bool = False) -> Dict[str, float]:
    x = torch.randn(1, 1, size, size)
    fwd: List[float] = []
    train: List[float] = []
    fwd_mem = train_mem = 0.0
    model.eval()
    with torch.no_grad():
        for _ in range(repeats):
            with PeakRSS() as m:
                t = time.perf_counter()
                y = model(x)
                fwd.append(time.perf_counter() - t)
            del y
            fwd_mem = max(fwd_mem, m.peak_mb)
    if skip_train:
        return {"fwd_s": min(fwd), "train_s": None, "fwd_mem_mb": fwd_mem, "train_mem_mb": None}
    model.train()
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        with PeakRSS() as m:
            t = time.perf_counter()
            model(x).float().mean().backward()
            train.append(time.perf_counter() - t)
        train_mem = max(train_mem, m.peak_mb)
    model.zero_grad(set_to_none=True)
    return {"fwd_s": min(fwd), "train_s": min(train),
            "fwd_mem_mb": fwd_mem, "train_mem_mb": train_mem}


def plot(results: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for key, ax, title in (("fwd_s", axes[0], "forward time [s]"), ("train_s", axes[1], "forward+backward time [s]"),
                           ("train_mem_mb", axes[2], "peak memory, forward+backward [MiB]")):
        for name in dict.fromkeys(r["model"] for r in results):
            rows = [r for r in results if r["model"] == name and r.get(key) is not None]
            if rows:
                ax.plot([r["size"] ** 2 for r in rows], [max(r[key], 1e-3) for r in rows], "o-", label=LABELS[name])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels (batch 1, 1 channel)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--mem-fraction", type=float, default=0.6,
                    help="skip a fwd+bwd measurement whose memory, extrapolated from the previous size, exceeds this "
                         "fraction of the available memory (protects shared machines from running out of memory)")
    args = ap.parse_args(argv)
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable,
                 [sys.executable, os.path.abspath(__file__)] + list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    factories = build_models()
    results: List[dict] = []
    sizes = sorted(args.sizes)
    for name in args.models:
        for i, size in enumerate(sizes):
            model = factories[name](size)
            params = sum(p.numel() for p in model.parameters())
            if i == 0 or name == "unetr":
                with torch.no_grad():
                    model.eval()(torch.randn(1, 1, sizes[0] if name != "unetr" else size,
                                             sizes[0] if name != "unetr" else size))
            row = {"model": name, "label": LABELS[name], "size": size, "params_m": params / 1e6}
            skip_train = False
            prev = [r for r in results if r["model"] == name and r.get("train_mem_mb")]
            if prev:
                ratio = (size / prev[-1]["size"]) ** 2
                predicted = prev[-1]["train_mem_mb"] * (ratio**2 if name in QUADRATIC else ratio * 1.2)
                limit = args.mem_fraction * _available_mb()
                if predicted > limit:
                    skip_train = True
                    row["note"] = (f"fwd+bwd skipped: predicted {predicted / 1024:.1f} GiB "
                                   f"> limit {limit / 1024:.1f} GiB")
            try:
                row.update(measure(model, size, args.repeats, skip_train))
            except (RuntimeError, MemoryError) as e:  # e.g. out of memory at 1024^2: record, do not abort the run
                row.update({"fwd_s": None, "train_s": None, "fwd_mem_mb": None, "train_mem_mb": None,
                            "error": f"{type(e).__name__}: {str(e)[:200]}"})
            results.append(row)
            print(json.dumps(row), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench_models.json").write_text(json.dumps(results, indent=1))
            del model
            gc.collect()

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    lines = [
        f"CPU benchmark, batch 1, 1 input channel, 2 classes; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"repeats={args.repeats} (best) "
        "; memory = peak RSS above the pre-call level (MALLOC_MMAP_THRESHOLD_="
        f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}). 1-min load average at start / end: {load_start:.1f} / "
        f"{os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f} (above the thread count, other "
        "processes shared the CPU and times are inflated).",
        "",
        "| model | params (M) | size | forward (s) | fwd+bwd (s) | peak mem fwd (MiB) "
        "| peak mem fwd+bwd (MiB) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(f"| {r['label']} | {r['params_m']:.2f} | {r['size']}^2 | {fmt(r['fwd_s'], '.3f')} | "
                     f"{fmt(r['train_s'], '.3f')} | {fmt(r['fwd_mem_mb'], '.0f')} | {fmt(r['train_mem_mb'], '.0f')} | "
                     + (r.get("note") or r.get("error") or "") + " |")
    get = {(r["model"], r["size"]): r for r in results}
    lines.append("")
    a, b = get.get(("medurwkv", 512)), get.get(("swinunetr48", 512))
    if a and b and a["fwd_s"] and b["fwd_s"]:
        ok = a["fwd_s"] < b["fwd_s"]
        lines.append(f"- Target 1 ({'met' if ok else 'NOT met'}): MedURWKV-tiny forward at 512^2 {a['fwd_s']:.3f} s vs "
                     f"SwinUNETR fs48 {b['fwd_s']:.3f} s.")
    a, b = get.get(("medurwkv", 512)), get.get(("medurwkv", 1024))
    if a and b and a["train_mem_mb"] and b["train_mem_mb"]:
        gf = b["fwd_mem_mb"] / max(a["fwd_mem_mb"], 1e-6)
        gt = b["train_mem_mb"] / max(a["train_mem_mb"], 1e-6)
        ok = gf <= 4.5 and gt <= 4.5
        lines.append(f"- Target 2 ({'met' if ok else 'NOT met'}): MedURWKV-tiny peak memory 512^2 -> 1024^2 grows "
                     f"x{gf:.2f} (forward), x{gt:.2f} (forward+backward); limit x4.5.")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_models.md").write_text(table)
    (args.out / "bench_models.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "bench_models.png")
    print(table)
    print(f"wrote {args.out / 'bench_models.md'}, bench_models.json, bench_models.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
