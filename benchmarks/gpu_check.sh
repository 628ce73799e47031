#!/usr/bin/env bash
# Bi-WKV CUDA kernel check for a GPU machine: build, accuracy against float64 references on fresh
# inputs, and bandwidth at B=2, C=384, T=65536 beside a device-to-device copy of the same run.
# Usage: benchmarks/gpu_check.sh [PYTHON]   (default: $PYTHON, else python3; needs a CUDA torch).
# Exit status non-zero if the build or any accuracy check fails. Only torch is needed (the rest
# of the package's dependencies are not imported).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${1:-${PYTHON:-python3}}"
cd "$here"
export MEDURWKV_WKV_BACKEND=""  # the script picks backends explicitly
"$py" - <<'PY'
import statistics
import sys
import time
import types
from pathlib import Path

import torch

# Import medurwkv_net.ops without the package __init__ (which pulls in monai for the networks).
root = Path.cwd()
pkg = types.ModuleType("medurwkv_net")
pkg.__path__ = [str(root / "medurwkv_net")]
sys.modules["medurwkv_net"] = pkg
from medurwkv_net.ops import bi_wkv, bi_wkv_ref, bi_wkv_torch  # noqa: E402
from medurwkv_net.ops import build  # noqa: E402

if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible")
dev = torch.device("cuda")
print(f"gpu_check: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
t0 = time.time()
ext = build.load_extension(cuda=True)
print(f"gpu_check: extension ready in {time.time() - t0:.0f} s: {ext.__file__}")

failures = []


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def inputs(B, T, C, seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    u = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    gy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    return [x.to(dev) for x in (w, u, k, v, gy)]


def reference(w, u, k, v, gy, T):
    """float64 output and gradients: the O(T^2) definition where it fits, else the linear path."""
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    fn = bi_wkv_ref if T <= 4096 else bi_wkv_torch
    y = fn(*ins)
    return y.detach(), torch.autograd.grad(y, ins, gy)


TOL = {  # (output, gradients) relative-norm tolerances: compute error on top of dtype rounding
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (1.2e-2, 3e-2),
    torch.float64: (1e-11, 1e-10),
}
print("\n| T | B x C | dtype | out rel err | grad rel err (w, u, k, v) | ok |")
print("|---:|---:|---|---:|---|---|")
for T, B, C in [(1, 3, 7), (37, 3, 7), (196, 5, 13), (4096, 1, 23), (65536, 1, 9)]:
    w, u, k, v, gy = inputs(B, T, C, seed=T)
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        if dt == torch.float64 and T > 4096:
            continue
        # reference from the inputs as the kernel sees them (rounded to dt): only compute error counts
        kd, vd, gyd = k.to(dt), v.to(dt), gy.to(dt)
        y_ref, g_ref = reference(w, u, kd.double(), vd.double(), gyd.double(), T)
        ins = [w.float() if dt != torch.float64 else w, u.float() if dt != torch.float64 else u, kd, vd]
        ins = [x.clone().requires_grad_(True) for x in ins]
        y = bi_wkv(*ins, backend="cuda")
        grads = torch.autograd.grad(y, ins, gyd)
        e_out = rel(y, y_ref)
        e_g = [rel(g, r) for g, r in zip(grads, g_ref)]
        ok = y.dtype == dt and e_out <= TOL[dt][0] and max(e_g) <= TOL[dt][1]
        ok = ok and all(g.dtype == x.dtype for g, x in zip(grads, ins))
        if not ok:
            failures.append((T, dt))
        print(f"| {T} | {B}x{C} | {str(dt)[6:]} | {e_out:.2e} | {', '.join(f'{e:.1e}' for e in e_g)} | {'yes' if ok else 'NO'} |")

# Large |w * T| (the kernel reports it and the log-scaled path takes over) and gradcheck.
w, u, k, v, gy = inputs(2, 300, 3, seed=5)
w = torch.tensor([-2.0, 50.0, -50.0], device=dev, dtype=torch.float64)
e = rel(bi_wkv(w.float(), u.float(), k.float(), v.float(), backend="cuda"), bi_wkv_ref(w, u, k, v))
print(f"\nlarge |w|: rel err {e:.2e}")
if not e < 1e-4:
    failures.append(("large w", e))
w, u, k, v, gy = inputs(2, 70, 3, seed=6)
ins = [x.requires_grad_(True) for x in (w, u, k, v)]
gc = torch.autograd.gradcheck(lambda *a: bi_wkv(*a, backend="cuda"), ins)
print(f"gradcheck float64 (T=70, 2 chunks of backward): {gc}")

# Bandwidth: B=2, C=384, T=65536.
B, T, C = 2, 65536, 384


def cuda_time(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


print(f"\nB={B}, C={C}, T={T}")
print("| dtype | copy GB/s | fwd ms | fwd GB/s | fwd / copy | bwd ms | bwd GB/s | bwd / copy | torch-path fwd ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for dt in (torch.float32, torch.float16, torch.bfloat16):
    g = torch.Generator(device=dev).manual_seed(0)
    w = ((torch.rand(C, device=dev, generator=g) * 8 - 5) / T)
    u = ((torch.rand(C, device=dev, generator=g) * 8 - 5) / T)
    k = (torch.randn(B, T, C, device=dev, generator=g) * 3).to(dt)
    v = (torch.randn(B, T, C, device=dev, generator=g) * 3).to(dt)
    gy = torch.randn(B, T, C, device=dev, generator=g).to(dt)
    nbytes = k.numel() * k.element_size()
    dst = torch.empty_like(k)
    t_copy = cuda_time(lambda: dst.copy_(k))
    bw_copy = 2 * nbytes / t_copy
    y, ok = ext.forward(w, u, k, v)
    assert ok
    t_f = cuda_time(lambda: ext.forward(w, u, k, v))
    t_b = cuda_time(lambda: ext.backward(w, u, k, v, y, gy))
    with torch.no_grad():
        t_t = cuda_time(lambda: bi_wkv_torch(w, u, k, v), reps=3)
    bw_f = 3 * nbytes / t_f  # reads k, v; writes y
    bw_b = 6 * nbytes / t_b  # reads k, v, y, dy; writes dk, dv
    print(f"| {str(dt)[6:]} | {bw_copy / 1e9:.0f} | {t_f * 1e3:.3f} | {bw_f / 1e9:.0f} | {bw_f / bw_copy:.2f} | "
          f"{t_b * 1e3:.3f} | {bw_b / 1e9:.0f} | {bw_b / bw_copy:.2f} | {t_t * 1e3:.1f} |")

if failures or not gc:
    sys.exit(f"gpu_check: FAILED {failures}")
print("\ngpu_check: all accuracy checks passed")
PY
