"""Peak memory of sliding-window inference on a 4096x4096 2D image and a 256^3 volume.

Each case runs in a fresh subprocess so that its peak resident set size (``ru_maxrss``) is its own.
Reported per case: the process peak, the baseline after imports + input allocation, the increase,
and the unavoidable part (input + stitched output + count map). For comparison the 2D case is also run
as one full-image forward pass of the same network.

    python benchmarks/bench_inference_memory.py [--out benchmarks/results/inference_memory.json] [--quick]

The network is a small conv net (3x3 conv to 4 channels, ReLU, 1x1 conv to 2 classes); windows run on the GPU if one is
available (``sw_device``) and the output is stitched in CPU memory (``device='cpu'``).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "2d_4096_sliding": {"shape": [1, 4096, 4096], "roi": [512, 512], "mode": "sliding"},
    "2d_4096_full_forward": {"shape": [1, 4096, 4096], "roi": [512, 512], "mode": "full"},
    "3d_256_sliding": {"shape": [1, 256, 256, 256], "roi": [96, 96, 96], "mode": "sliding"},
}
QUICK = {  # small sizes for a smoke run
    "2d_1024_sliding": {"shape": [1, 1024, 1024], "roi": [256, 256], "mode": "sliding"},
    "3d_64_sliding": {"shape": [1, 64, 64, 64], "roi": [32, 32, 32], "mode": "sliding"},
}


def _rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_case(spec: dict) -> dict:
    import torch

    from medurwkv_net.reliability import sliding_window_predict

    torch.manual_seed(0)
    dims = len(spec["roi"])
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    net = torch.nn.Sequential(conv(1, 4, 3, padding=1), torch.nn.ReLU(), conv(4, 2, 1))
    sw_device = "cuda" if torch.cuda.is_available() else "cpu"
    net = net.to(sw_device).eval()
    image = torch.rand(*spec["shape"])
    baseline = _rss_mib()
    t0 = time.perf_counter()
    if spec["mode"] == "full":
        with torch.no_grad():
            out = net(image[None].to(sw_device)).argmax(1).to(torch.uint8).cpu()
    else:
        out = sliding_window_predict(net, image, spec["roi"], sw_batch_size=4, overlap=0.25,
                                     sw_device=sw_device, device="cpu", argmax=True)
    seconds = time.perf_counter() - t0
    n = image.numel()
    return {
        "shape": spec["shape"], "roi": spec["roi"], "mode": spec["mode"], "sw_device": sw_device,
        "out_shape": list(out.shape),
        "peak_rss_mib": round(_rss_mib(), 1),
        "baseline_rss_mib": round(baseline, 1),
        "increase_mib": round(_rss_mib() - baseline, 1),
        # input (fp32) + stitched logits (2 ch fp32) + count map (fp32) that any stitching must hold
        "unavoidable_mib": round(n * 4 * (1 + 2 + 1) / 2**20, 1),
        "seconds": round(seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference_memory.json"))
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    cases = QUICK if args.quick else CASES
    if args.case:
        print(json.dumps(run_case(cases[args.case])))
        return
    results = {}
    for name in cases:
        cmd = [sys.executable, __file__, "--case", name] + (["--quick"] if args.quick else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"case {name} failed:\n{r.stderr}")
        results[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{name:24s} " + " ".join(f"{k}={v}" for k, v in results[name].items()), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:
        pass
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
