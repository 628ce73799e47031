"""Settle the Bi-WKV CUDA path on one NVIDIA GPU in under five minutes; run through ``gpu_check.sh``.

Every check prints one line ``PASS|FAIL|SKIP <check>: <numbers>``; a summary follows and the exit
status is 1 when any check failed. The kernel is called directly (``torch.ops.medurwkv``), so a kernel
that falls back to PyTorch cannot pass. Without a GPU, or with ``--dry-run``, the same checks run on
the CPU kernel at small sizes (GPU-only checks print SKIP): this exercises the script's logic.

Checks: build; accuracy against float64 at chunk boundaries and T = 1 in every dtype (output and the
four gradients, metric of ``medurwkv_net.ops.bi_wkv_check``); extreme w / k; compute-sanitizer memcheck
and initcheck; B * T * C > 2^31; a side stream; bitwise determinism; a second device; no host
synchronisation; CUDA graph capture and torch.compile; bandwidth as a fraction of a device copy; the
VRWKV reference features; a Med-URWKV training step under bf16 autocast against the CPU kernel.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medurwkv_net.ops import bi_wkv, bi_wkv_torch, build  # noqa: E402
from medurwkv_net.ops import bi_wkv_check as chk  # noqa: E402
from medurwkv_net.ops.bi_wkv_interface import ENV_BACKEND  # noqa: E402

GROUPS = ("build", "accuracy", "extreme", "sanitizer", "large-index", "stream", "determinism", "devices",
          "syncs", "graphs", "bandwidth", "vrwkv", "medurwkv")
BANDWIDTH_MIN = {"forward": 0.10, "backward": 0.10}  # useful bytes / time, as a fraction of a device copy
Result = Tuple[str, str]  # (status, detail)


class Context:
    """What the checks share: the device, the dtypes its kernel takes and the tolerance scale."""

    def __init__(self, dry: bool, tol_scale: float) -> None:
        self.dry = dry
        self.dev = torch.device("cpu" if dry else "cuda")
        self.kind = "cpu" if dry else "cuda"
        self.dtypes = [torch.float64, torch.float32] + ([] if dry else [torch.float16, torch.bfloat16])
        self.tol_scale = tol_scale

    def sync(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()


def inputs(B, T, C, seed, dev, dtype=torch.float64):
    """w, u (float64, or float32 for the other dtypes), k, v, dy of ``dtype`` on ``dev``."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    u = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    gy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return [w.to(dev, acc), u.to(dev, acc)] + [x.to(dev, dtype) for x in (k, v, gy)]


def kernel_call(w, u, k, v):
    """The compiled kernel through its torch.library op: no backend choice, no fallback."""
    return torch.ops.medurwkv.bi_wkv_forward(w, u, k.contiguous(), v.contiguous())[0]


def kernel_grads(w, u, k, v, gy):
    ins = [x.detach().clone().requires_grad_(True) for x in (w, u, k, v)]
    y = kernel_call(*ins)
    return y.detach(), torch.autograd.grad(y, ins, gy)


def accuracy_case(ctx: Context, B, T, C, dtype, seed) -> Result:
    w, u, k, v, gy = inputs(B, T, C, seed, ctx.dev, dtype)
    y, grads = kernel_grads(w, u, k, v, gy)
    y_ref, grads_ref = chk.reference(w.cpu(), u.cpu(), k.cpu(), v.cpu(), gy.cpu())
    errs = chk.errors(y.cpu(), [g.cpu() for g in grads], y_ref, grads_ref, v.cpu(), gy.cpu())
    tol_out, tol_grad = (t * ctx.tol_scale for t in chk.TOLERANCES[dtype])
    ok = y.dtype == dtype and all(e <= (tol_out if n == "y" else tol_grad) for n, e in errs.items())
    ok = ok and grads[2].dtype == dtype and grads[0].dtype == w.dtype
    detail = " ".join(f"{n} {e:.1e}" for n, e in errs.items()) + f" (tol {tol_out:.0e}/{tol_grad:.0e})"
    return ("PASS" if ok else "FAIL"), detail


def check_accuracy(ctx: Context) -> List[Tuple[str, Callable[[], Result]]]:
    shapes = [(3, 1, 7), (2, 2, 5), (2, 15, 33), (2, 16, 33), (2, 17, 33), (1, 511, 40), (1, 512, 40),
              (1, 513, 40)]
    if not ctx.dry:
        shapes += [(2, 1100, 21), (2, 4096, 24), (1, 65536, 8)]
    out = []
    for i, (B, T, C) in enumerate(shapes):
        for dt in ctx.dtypes:
            name = f"accuracy B={B} T={T} C={C} {str(dt)[6:]}"
            out.append((name, lambda B=B, T=T, C=C, dt=dt, i=i: accuracy_case(ctx, B, T, C, dt, seed=i)))
    return out


def check_extreme(ctx: Context) -> Result:
    """w = +-50 (|w| T = 15000), a k range of 200: finite and exact, no fallback exists to hide behind."""
    worst = 0.0
    for dt in (torch.float64, torch.float32):
        for w_value in (50.0, -50.0):
            w, u, k, v, gy = inputs(1, 300, 3, 5, ctx.dev, dt)
            w = torch.full_like(w, w_value)
            k[0, 7, 1], k[0, 9, 2] = 100.0, -100.0
            y, grads = kernel_grads(w, u, k, v, gy)
            y_ref, grads_ref = chk.reference(w.cpu(), u.cpu(), k.cpu(), v.cpu(), gy.cpu())
            errs = chk.errors(y.cpu(), [g.cpu() for g in grads], y_ref, grads_ref, v.cpu(), gy.cpu())
            tol = 1e-10 if dt == torch.float64 else 1e-4 + 1e-7 * 50 * 300  # float32: the ulp of |w| T
            if not all(torch.isfinite(t).all() for t in [y, *grads]) or max(errs.values()) > tol * ctx.tol_scale:
                return "FAIL", f"{str(dt)[6:]} w={w_value}: {errs}"
            worst = max(worst, max(errs.values()) / tol)
    return "PASS", f"finite; worst error {worst:.2f} of its tolerance"


def sanitize_case() -> None:
    """The small case run under compute-sanitizer (``--sanitize-case``)."""
    build.load_extension(cuda=True)
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for T in (1, 17, 513):
            w, u, k, v, gy = inputs(2, T, 5, T, torch.device("cuda"), dt)
            kernel_grads(w, u, k, v, gy)
    torch.cuda.synchronize()


def check_sanitizer(ctx: Context, tool: str) -> Result:
    if ctx.dry:
        return "SKIP", "needs a GPU"
    home = build.find_cuda_home()
    exe = Path(home or "/nonexistent") / "bin" / "compute-sanitizer"
    if not exe.exists():
        return "FAIL", f"compute-sanitizer not found (CUDA toolkit: {home}); set CUDA_HOME to the toolkit"
    cmd = [str(exe), "--tool", tool, "--error-exitcode", "3", sys.executable, __file__, "--sanitize-case"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    summary = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR SUMMARY" in ln]
    ok = proc.returncode == 0 and summary and " 0 errors" in summary[-1]
    tail = summary[-1].strip() if summary else (proc.stdout + proc.stderr).strip()[-300:]
    return ("PASS" if ok else "FAIL"), f"{tail} ({time.time() - t0:.0f} s, exit {proc.returncode})"


def check_large_index(ctx: Context) -> Result:
    """B * T * C > 2^31 (float16): the last batch row equals the kernel on that row alone (bitwise, output and
    dk, dv) and float64 within the float16 tolerance. The ops are called without autograd (no copies):
    at most about 25 bytes of device memory per element."""
    B, T, C = (3, 40, 5) if ctx.dry else (520, 4100, 1024)
    dt = torch.float32 if ctx.dry else torch.float16
    n = B * T * C
    if not ctx.dry:
        free = torch.cuda.mem_get_info()[0]
        if free < 28 * n:
            return "SKIP", f"needs {28 * n / 2**30:.0f} GiB free, the device has {free / 2**30:.0f} GiB"
    g = torch.Generator(device=ctx.dev).manual_seed(0)
    w = (torch.rand(C, device=ctx.dev, generator=g) * 8 - 5) / T
    u = (torch.rand(C, device=ctx.dev, generator=g) * 8 - 5) / T
    k = torch.randn(B, T, C, device=ctx.dev, generator=g, dtype=dt).mul_(3)
    v = torch.randn(B, T, C, device=ctx.dev, generator=g, dtype=dt).mul_(3)
    gy = torch.randn(B, T, C, device=ctx.dev, generator=g, dtype=dt)
    ops = torch.ops.medurwkv

    def last_rows(kk, vv, gg):
        y, yc, lse, c0 = ops.bi_wkv_forward(w, u, kk, vv)
        _, _, gk, gv = ops.bi_wkv_backward(w, u, kk, vv, yc, lse, c0, gg)
        return [t[-1:].clone() for t in (y, gk, gv)]

    big = last_rows(k, v, gy)
    small = last_rows(k[-1:].contiguous(), v[-1:].contiguous(), gy[-1:].contiguous())
    same = all(torch.equal(a, b) for a, b in zip(big, small))
    y_ref, _ = chk.reference(w[:4].cpu(), u[:4].cpu(), k[-1:, :, :4].cpu(), v[-1:, :, :4].cpu(),
                             gy[-1:, :, :4].cpu())
    err = float((big[0][:, :, :4].double().cpu() - y_ref).norm() / y_ref.norm())
    ok = same and err <= chk.TOLERANCES[dt][0] * ctx.tol_scale
    detail = f"B*T*C = {n} ({n / 2**31:.2f} x 2^31): last row bitwise equal {same}, output err {err:.1e}"
    return ("PASS" if ok else "FAIL"), detail


def check_stream(ctx: Context) -> Result:
    """Inputs made on a side stream and used at once there: the kernels must run on the current stream."""
    if ctx.dry:
        return "SKIP", "needs a GPU"
    w, u, k, v, gy = inputs(2, 3000, 64, 1, ctx.dev, torch.float32)
    y0, g0 = kernel_grads(w, u, k, v, gy)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        k2 = (k * 2.0) * 0.5  # produced on s, not synchronised with the default stream
        y1, g1 = kernel_grads(w, u, k2, v, gy)
    s.synchronize()
    same = torch.equal(y0, y1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    return ("PASS" if same else "FAIL"), f"side-stream results bitwise equal: {same}"


def check_determinism(ctx: Context) -> Result:
    w, u, k, v, gy = inputs(3, 2500, 48, 2, ctx.dev, torch.float32)
    runs = [kernel_grads(w, u, k, v, gy) for _ in range(2)]
    same = torch.equal(runs[0][0], runs[1][0]) and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    return ("PASS" if same else "FAIL"), f"two runs bitwise equal (y, dw, du, dk, dv): {same}"


def check_devices(ctx: Context) -> Result:
    if ctx.dry:
        return "SKIP", "needs a GPU"
    if torch.cuda.device_count() < 2:
        return "SKIP", "one GPU visible"
    w, u, k, v, gy = inputs(2, 700, 40, 3, ctx.dev, torch.float32)
    y0, g0 = kernel_grads(w, u, k, v, gy)
    d1 = torch.device("cuda:1")
    with torch.cuda.device(0):  # current device 0, tensors on 1: the kernel's device guard
        y1, g1 = kernel_grads(*(x.to(d1) for x in (w, u, k, v, gy)))
    torch.cuda.synchronize(d1)
    errs = [float((a.cpu() - b.cpu()).norm() / b.cpu().norm().clamp_min(1e-30)) for a, b in zip([y1, *g1], [y0, *g0])]
    ok = y1.device == d1 and max(errs) <= 1e-6
    detail = f"cuda:1 ({torch.cuda.get_device_name(1)}) vs cuda:0: max rel diff {max(errs):.1e}"
    return ("PASS" if ok else "FAIL"), detail


def check_syncs(ctx: Context) -> Result:
    """bi_wkv (forward and backward) with every synchronising call made an error."""
    w, u, k, v, gy = inputs(2, 600, 24, 4, ctx.dev, torch.float32)
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    if ctx.dry:  # no device: forbid host reads of tensor values instead
        saved = {n: getattr(torch.Tensor, n) for n in ("item", "tolist", "__bool__", "__float__", "__int__")}

        def forbidden(*a, **kw):
            raise RuntimeError("host read of a tensor value")

        try:
            for n in saved:
                setattr(torch.Tensor, n, forbidden)
            y = bi_wkv(*ins, backend=ctx.kind)
            torch.autograd.grad(y, ins, gy)
        finally:
            for n, f in saved.items():
                setattr(torch.Tensor, n, f)
        return "PASS", "no host read of a tensor value (CPU kernel)"
    bi_wkv(*ins, backend="cuda")  # warm-up: first use may build / load
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = bi_wkv(*ins, backend="cuda")
        torch.autograd.grad(y, ins, gy)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "PASS", "forward and backward ran with torch.cuda.set_sync_debug_mode('error')"


def check_graphs(ctx: Context) -> Result:
    w, u, k, v, gy = inputs(2, 300, 16, 6, ctx.dev, torch.float32)
    y_eager = kernel_call(w, u, k, v)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: bi_wkv(*a, backend=ctx.kind), backend="aot_eager", fullgraph=True)
    ok_compile = torch.equal(compiled(w, u, k, v), y_eager)
    if ctx.dry:
        return ("PASS" if ok_compile else "FAIL"), f"torch.compile fullgraph equal: {ok_compile}; CUDA graph: no GPU"
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        kernel_call(w, u, k, v)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = kernel_call(w, u, k, v)
    k2, v2 = torch.randn_like(k), torch.randn_like(v)
    k.copy_(k2)
    v.copy_(v2)
    graph.replay()
    torch.cuda.synchronize()
    ok_graph = torch.equal(y_static, kernel_call(w, u, k2, v2))
    ok = ok_compile and ok_graph
    detail = f"torch.compile fullgraph equal: {ok_compile}; CUDA graph replay equal: {ok_graph}"
    return ("PASS" if ok else "FAIL"), detail


def _timed(ctx: Context, fn, reps: int) -> float:
    for _ in range(2):
        fn()
    ctx.sync()
    times = []
    for _ in range(reps):
        if ctx.dry:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        else:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def check_bandwidth(ctx: Context, B, T, C, dt) -> Result:
    """Useful bytes (forward: read k, v, write y; backward: read k, v, y, dy, write dk, dv) per second as a
    fraction of a device-to-device copy of k (read and write)."""
    if ctx.dry:
        B, T, C = 1, 512, 32
    w, u, k, v, gy = inputs(B, T, C, 0, ctx.dev, dt)
    nbytes = k.numel() * k.element_size()
    dst = torch.empty_like(k)
    t_copy = _timed(ctx, lambda: dst.copy_(k), 10)
    copy_bw = 2 * nbytes / t_copy
    ops = torch.ops.medurwkv
    y, yc, lse, c0 = ops.bi_wkv_forward(w, u, k, v)
    t_f = _timed(ctx, lambda: ops.bi_wkv_forward(w, u, k, v), 10)
    t_b = _timed(ctx, lambda: ops.bi_wkv_backward(w, u, k, v, yc, lse, c0, gy), 10)
    with torch.no_grad():
        t_t = _timed(ctx, lambda: bi_wkv_torch(w, u, k, v), 2)
    f_fwd = 3 * nbytes / t_f / copy_bw
    f_bwd = 6 * nbytes / t_b / copy_bw
    detail = (f"copy {copy_bw / 1e9:.0f} GB/s; forward {t_f * 1e3:.3f} ms = {f_fwd:.2f} of copy "
              f"(min {BANDWIDTH_MIN['forward']}); backward {t_b * 1e3:.3f} ms = {f_bwd:.2f} "
              f"(min {BANDWIDTH_MIN['backward']}); torch path forward {t_t * 1e3:.1f} ms")
    if ctx.dry:
        return "PASS", detail + " [dry run: no threshold]"
    ok = f_fwd >= BANDWIDTH_MIN["forward"] and f_bwd >= BANDWIDTH_MIN["backward"]
    return ("PASS" if ok else "FAIL"), detail


def check_vrwkv(ctx: Context) -> Result:
    """The official backbone's features (tests/fixtures/vrwkv_reference) with the device's kernel forced."""
    from medurwkv_net import VRWKV, load_vrwkv_weights

    folder = ROOT / "tests" / "fixtures" / "vrwkv_reference"
    worst = 0.0
    for name in ("vrwkv_mini", "vrwkv_mini_kn"):
        io = torch.load(folder / f"{name}_io.pt", weights_only=True)
        model = VRWKV(**io["config"]).eval()
        load_vrwkv_weights(model, folder / f"{name}_ckpt.pth")
        model.to(ctx.dev)
        for inp, target in (("x224", "feats224_paperwkv"), ("x_odd", "feats_odd_paperwkv")):
            with torch.no_grad():
                feats = model(io[inp].to(ctx.dev))
            for got, exp in zip(feats, io[target]):
                worst = max(worst, float((got.cpu() - exp).abs().max()))
    ok = worst < 1e-4 * ctx.tol_scale
    return ("PASS" if ok else "FAIL"), f"max abs error {worst:.1e} (limit 1e-4)"


def _small_medurwkv(size: int):
    from medurwkv_net import MedURWKV

    return MedURWKV(spatial_dims=2, in_channels=1, out_channels=2, img_size=size, feature_size=16,
                    bottleneck_depth=1, decoder_depths=(1, 1, 1))


def _train_step(dev: torch.device, state, x, target) -> Tuple[float, torch.Tensor]:
    net = _small_medurwkv(x.shape[-1]).to(dev)
    net.load_state_dict(state)
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(net(x.to(dev)), target.to(dev))
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.float().flatten().cpu() for p in net.parameters()])


def check_medurwkv(ctx: Context) -> Result:
    """A Med-URWKV training step under bf16 autocast: the device's kernel against the CPU kernel (on CPU in
    a dry run: the CPU kernel against the pure-PyTorch path)."""
    torch.manual_seed(0)
    size = 32 if ctx.dry else 64
    state = _small_medurwkv(size).state_dict()
    x = torch.randn(2, 1, size, size)
    target = (x[:, 0] > 0).long()
    other = "torch" if ctx.dry else "cpu"
    old = os.environ.get(ENV_BACKEND)
    try:
        os.environ[ENV_BACKEND] = ctx.kind
        loss_a, g_a = _train_step(ctx.dev, state, x, target)
        os.environ[ENV_BACKEND] = other
        loss_b, g_b = _train_step(torch.device("cpu"), state, x, target)
    finally:
        if old is None:
            os.environ.pop(ENV_BACKEND, None)
        else:
            os.environ[ENV_BACKEND] = old
    rel_loss = abs(loss_a - loss_b) / abs(loss_b)
    rel_grad = float((g_a - g_b).norm() / g_b.norm())
    cos = float(torch.nn.functional.cosine_similarity(g_a, g_b, dim=0))
    ok = math.isfinite(loss_a) and rel_loss <= 2e-2 * ctx.tol_scale and rel_grad <= 0.1 * ctx.tol_scale and cos >= 0.99
    detail = (f"{ctx.kind} vs {other}: loss {loss_a:.4f} vs {loss_b:.4f} (rel {rel_loss:.1e}), "
              f"gradients rel {rel_grad:.1e}, cosine {cos:.4f}")
    return ("PASS" if ok else "FAIL"), detail


def checks(ctx: Context, only: Optional[List[str]]):
    """(group, name, function) of every check, in order."""
    def build_check() -> Result:
        t0 = time.time()
        mod = build.load_extension(cuda=not ctx.dry)
        return "PASS", f"{Path(mod.__file__).name} ready in {time.time() - t0:.0f} s"

    items = [("build", f"build the {ctx.kind} kernel", build_check)]
    items += [("accuracy", n, f) for n, f in check_accuracy(ctx)]
    items += [("extreme", "extreme w and k ranges", lambda: check_extreme(ctx))]
    items += [("sanitizer", f"compute-sanitizer {t}", lambda t=t: check_sanitizer(ctx, t))
              for t in ("memcheck", "initcheck")]
    items += [("large-index", "B*T*C > 2^31", lambda: check_large_index(ctx)),
              ("stream", "side stream", lambda: check_stream(ctx)),
              ("determinism", "bitwise determinism", lambda: check_determinism(ctx)),
              ("devices", "second device", lambda: check_devices(ctx)),
              ("syncs", "no host synchronisation", lambda: check_syncs(ctx)),
              ("graphs", "torch.compile and CUDA graph capture", lambda: check_graphs(ctx))]
    for B, T in ((2, 65536), (16, 4096)):
        for dt in (torch.float32, torch.bfloat16) if not ctx.dry else (torch.float32,):
            items.append(("bandwidth", f"bandwidth B={B} T={T} C=192 {str(dt)[6:]}",
                          lambda B=B, T=T, dt=dt: check_bandwidth(ctx, B, T, 192, dt)))
    items += [("vrwkv", "VRWKV reference features", lambda: check_vrwkv(ctx)),
              ("medurwkv", "Med-URWKV training step, bf16 autocast", lambda: check_medurwkv(ctx))]
    return [it for it in items if only is None or it[0] in only]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="run on the CPU kernel (automatic without a GPU)")
    p.add_argument("--only", default="", help=f"comma-separated groups of checks: {', '.join(GROUPS)}")
    p.add_argument("--tolerance-scale", type=float, default=1.0, help="multiply every accuracy tolerance")
    p.add_argument("--sanitize-case", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sanitize_case:
        sanitize_case()
        return 0
    only = [g.strip() for g in args.only.split(",") if g.strip()] or None
    unknown = sorted(set(only or []) - set(GROUPS))
    if unknown:
        p.error(f"unknown groups {unknown}; choose from {', '.join(GROUPS)}")
    dry = args.dry_run or not torch.cuda.is_available()
    ctx = Context(dry, args.tolerance_scale)
    os.environ.pop(ENV_BACKEND, None)
    where = "DRY RUN on the CPU kernel" if dry else f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    print(f"gpu_check: {where}, torch {torch.__version__}", flush=True)
    t_start = time.time()
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    failed = []
    for _, name, fn in checks(ctx, only):
        t0 = time.time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # a fallback warning is a failure
                status, detail = fn()
        except Exception as err:  # noqa: BLE001 - any error fails the check, the others still run
            status = "FAIL"
            detail = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            if os.environ.get("GPU_CHECK_TRACEBACK"):
                traceback.print_exc()
        counts[status] += 1
        if status == "FAIL":
            failed.append(name)
        print(f"{status} {name}: {detail} [{time.time() - t0:.1f} s]", flush=True)
    total = time.time() - t_start
    verdict = "FAILED" if failed else "PASSED"
    print(f"gpu_check: {verdict}: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"in {total:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
