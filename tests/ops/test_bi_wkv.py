"""Bi-WKV operator: every backend available here against the O(T^2) definition.

The CPU kernel compiles on first use (about a minute on 2 cores; `python -m medurwkv_net build-ext`
prebuilds it). A kernel that fails to build fails these tests: nothing is skipped.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from medurwkv_net.ops import ENV_BACKEND, bi_wkv, bi_wkv_ref, bi_wkv_torch, resolve_backend
from medurwkv_net.ops import bi_wkv_interface as iface
from medurwkv_net.ops import build

BACKENDS = ["cpu", "torch"] + (["cuda"] if torch.cuda.is_available() else [])


def _device(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def make_inputs(B, T, C, dtype=torch.float64, device="cpu", seed=0):
    """Inputs as the issue specifies: k, v scaled by 3, decay uniform in [-5, 3] then divided by T."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    u = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    return [x.to(device=device, dtype=dtype) for x in (w, u, k, v)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(scope="module", autouse=True)
def cpu_kernel_built():
    """Build (or load) the CPU kernel once; a build failure is a test failure."""
    build.load_extension(cuda=False)


_REF_CACHE = {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [1, 2, 37, 196, 1000])
def test_matches_reference_float64(backend, T):
    B, C = 3, 7  # B * C = 21: not a multiple of 32
    w, u, k, v = make_inputs(B, T, C, seed=T)
    if T not in _REF_CACHE:
        _REF_CACHE[T] = bi_wkv_ref(w, u, k, v)
    dev = _device(backend)
    y = bi_wkv(w.to(dev), u.to(dev), k.to(dev), v.to(dev), backend=backend)
    assert y.shape == k.shape and y.dtype == k.dtype
    assert rel(y, _REF_CACHE[T]) < 1e-11


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B,T,C", [(1, 64, 16), (2, 65, 37), (3, 129, 48), (1, 300, 200)])
def test_cpu_kernel_work_split_matches_reference(B, T, C, threads):
    """The CPU kernel's tiling: full 16-channel tiles, tiles grouped per thread, the zero-padded
    tail tile, and time blocks of 64 steps (exact, one step over, several partial)."""
    w, u, k, v = make_inputs(B, T, C, seed=B * T + C)
    gy = torch.randn(B, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(C))
    ref_in = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    y_ref = bi_wkv_ref(*ref_in)
    ref_grads = torch.autograd.grad(y_ref, ref_in, gy)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
        y = bi_wkv(*ins, backend="cpu")
        grads = torch.autograd.grad(y, ins, gy)
    finally:
        torch.set_num_threads(before)
    assert rel(y, y_ref) < 1e-11
    for name, g, r in zip("wukv", grads, ref_grads):
        assert rel(g, r) < 1e-10, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [4096, 16384])
def test_float32_close_to_float64(backend, T):
    w, u, k, v = make_inputs(1, T, 21, device=_device(backend), seed=1)  # one full CPU tile + a padded one
    # float64 answer from the other linear backend (the O(T^2) reference does not fit in memory)
    other = "torch" if backend != "torch" else "cpu"
    y64 = bi_wkv(w, u, k, v, backend=other)
    assert rel(bi_wkv(w, u, k, v, backend=backend), y64) < 1e-11
    y32 = bi_wkv(*[x.float() for x in (w, u, k, v)], backend=backend)
    assert y32.dtype == torch.float32
    assert rel(y32, y64) < 1e-5


def test_linear_backends_agree_at_long_T():
    """T = 262144 (no length limit; an O(T^2) buffer would need terabytes)."""
    w, u, k, v = make_inputs(1, 262144, 2, seed=2)
    assert rel(bi_wkv(w, u, k, v, backend="cpu"), bi_wkv_torch(w, u, k, v)) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS + ["ref"])
@pytest.mark.parametrize("T", [1, 9])
def test_gradcheck_float64(backend, T):
    w, u, k, v = make_inputs(2, T, 3 if backend != "ref" else 2, device=_device(backend), seed=3)
    ins = [x.requires_grad_(True) for x in (w, u, k, v)]
    assert torch.autograd.gradcheck(lambda *a: bi_wkv(*a, backend=backend), ins)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_gradients_close_to_float64_reference(backend):
    w, u, k, v = make_inputs(2, 196, 21, seed=4)
    gy = torch.randn(2, 196, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ref_in = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    ref_grads = torch.autograd.grad(bi_wkv_ref(*ref_in), ref_in, gy)
    dev = _device(backend)
    f32_in = [x.float().to(dev).requires_grad_(True) for x in (w, u, k, v)]
    grads = torch.autograd.grad(bi_wkv(*f32_in, backend=backend), f32_in, gy.float().to(dev))
    for name, g, r in zip("wukv", grads, ref_grads):
        assert g.dtype == torch.float32, name
        assert rel(g, r) < 1e-4, name


@pytest.mark.parametrize("backend", BACKENDS + ["ref"])
def test_reproduces_paper_vectors(backend, reference_dir):
    io = torch.load(reference_dir / "vrwkv_mini_io.pt", weights_only=True)
    cases = [io["wkv_case"]] + list(io["wkv_extra"])
    assert len(cases) == 4
    for case in cases:
        w, u, k, v = (case[n].to(_device(backend)) for n in "wukv")
        y = bi_wkv(w, u, k, v, backend=backend)
        # The official op adds 1e-6 to its max-normalised denominator: ~1e-6 relative.
        torch.testing.assert_close(y.cpu(), case["y_paper"], rtol=5e-6, atol=5e-6)
        # ...and differs clearly from the kernel's chunk-dependent variant.
        if k.shape[1] > 32:
            assert (y.cpu() - case["y"]).abs().max() > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w_value", [-2.0, 50.0, -50.0])
def test_large_decay_is_robust(backend, w_value):
    """|w * T| far beyond what a plain exp-scaled recurrence survives: no inf/nan, exact values."""
    T, C = 300, 3
    _, _, k, v = make_inputs(1, T, C, seed=6)
    w = torch.full((C,), w_value, dtype=torch.float64)
    u = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    dev = _device(backend)
    y = bi_wkv(w.to(dev), u.to(dev), k.to(dev), v.to(dev), backend=backend)
    assert torch.isfinite(y).all()
    assert rel(y, bi_wkv_ref(w, u, k, v)) < 1e-10
    y32 = bi_wkv(*(x.float().to(dev) for x in (w, u, k, v)), backend=backend)
    assert torch.isfinite(y32).all() and rel(y32, bi_wkv_ref(w, u, k, v)) < 1e-4


def test_large_range_needs_no_fallback(monkeypatch):
    """One (b, c) beyond the range of the CPU kernel's float64 scaling is computed in-kernel by the
    log-scaled math (bi_wkv_math.cuh), its neighbours by the fast path: all exact, with no warning and no
    call of the pure-PyTorch path."""
    w, u, k, v = make_inputs(2, 40, 20, seed=7)  # one full 16-channel tile and a padded one
    w[3] = -100.0  # (T - 1) * 100 > the float64 range; channel 3 of the full tile
    w[17] = 30.0
    k[1, 5, 18] = 400.0  # k range 400 + ... in the padded tile
    monkeypatch.setattr(iface, "bi_wkv_torch", lambda *a, **kw: pytest.fail("fell back to bi_wkv_torch"))
    gy = torch.randn(2, 40, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    ref_in = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    y_ref = bi_wkv_ref(*ref_in)
    ref_grads = torch.autograd.grad(y_ref, ref_in, gy)
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = bi_wkv(*ins, backend="cpu")
        grads = torch.autograd.grad(y, ins, gy)
    assert rel(y, y_ref) < 1e-11
    for name, g, r in zip("wukv", grads, ref_grads):
        assert rel(g, r) < 1e-10, name
    small = [x[:1, :12, :4].clone().requires_grad_(True) if x.dim() == 3 else x[:4].clone().requires_grad_(True)
             for x in (w, u, k, v)]
    small[0].data[1] = -100.0
    assert torch.autograd.gradcheck(lambda *a: bi_wkv(*a, backend="cpu"), small)


def test_float32_exact_with_a_large_offset_in_v():
    """v = 1000 + N(0, 1) in float32: output and all gradients within 1e-5 of float64 (centred values)."""
    from medurwkv_net.ops import bi_wkv_check as chk

    w, u, k, _ = make_inputs(2, 300, 21, dtype=torch.float32, seed=13)
    g = torch.Generator().manual_seed(14)
    v = (1000.0 + torch.randn(2, 300, 21, generator=g, dtype=torch.float64)).float()
    gy = torch.randn(2, 300, 21, generator=g, dtype=torch.float64).float()
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    y = bi_wkv(*ins, backend="cpu")
    grads = torch.autograd.grad(y, ins, gy)
    y_ref, grads_ref = chk.reference(w, u, k, v, gy)
    errs = chk.errors(y, grads, y_ref, grads_ref, v, gy)
    assert max(errs.values()) <= 1e-5, errs


def test_non_finite_inputs_give_non_finite_outputs():
    """Values are not checked (no device synchronisation); NaN in w shows in the output, never a silent
    finite result."""
    w, u, k, v = make_inputs(1, 20, 3, dtype=torch.float32, seed=15)
    w[1] = float("nan")
    for backend in BACKENDS:
        dev = _device(backend)
        y = bi_wkv(w.to(dev), u.to(dev), k.to(dev), v.to(dev), backend=backend).cpu()
        assert torch.isnan(y[..., 1]).all(), backend
        assert torch.isfinite(y[..., [0, 2]]).all(), backend


def test_non_contiguous_inputs():
    w, u, k, v = make_inputs(2, 37, 6, seed=8)
    kt = k.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    vt = v.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    ws = torch.stack([w, w], 1)[:, 0]
    assert not kt.is_contiguous() and not vt.is_contiguous() and not ws.is_contiguous()
    for backend in BACKENDS:
        dev = _device(backend)
        y = bi_wkv(ws.to(dev), u.to(dev), kt.to(dev), vt.to(dev), backend=backend)
        assert rel(y, bi_wkv_ref(w, u, k, v)) < 1e-11


def test_half_inputs_on_cpu_auto():
    w, u, k, v = make_inputs(2, 50, 4, seed=9)
    for dt, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        y = bi_wkv(w.float(), u.float(), k.to(dt), v.to(dt))
        assert y.dtype == dt
        assert rel(y, bi_wkv_ref(w, u, k.to(dt).double(), v.to(dt).double())) < tol


def _bad(**overrides):
    w, u, k, v = make_inputs(2, 5, 3, dtype=torch.float32)
    args = {"w": w, "u": u, "k": k, "v": v}
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"k": torch.zeros(5, 3)}, r"k must have shape \[B, T, C\].*\(5, 3\)"),
        ({"v": torch.zeros(2, 5, 4)}, r"v must have the shape of k \(2, 5, 3\).*\(2, 5, 4\)"),
        ({"w": torch.zeros(4)}, r"w must have shape \[C\] = \[3\].*\(4,\)"),
        ({"u": torch.zeros(3, 1)}, r"u must have shape \[C\] = \[3\].*\(3, 1\)"),
        ({"k": torch.zeros(2, 0, 3), "v": torch.zeros(2, 0, 3)}, r"must not be empty.*\(2, 0, 3\)"),
        ({"k": torch.zeros(2, 5, 3, dtype=torch.int64)}, r"k must be float16.*torch.int64"),
        ({"v": torch.zeros(2, 5, 3, dtype=torch.float64)}, r"v must have the dtype of k \(torch.float32\).*float64"),
        ({"u": torch.zeros(3, dtype=torch.float64)}, r"u must have the dtype of w \(torch.float32\).*float64"),
        ({"w": torch.zeros(3, dtype=torch.int32), "u": torch.zeros(3, dtype=torch.int32)}, r"w must be a floating"),
        ({"v": torch.zeros(2, 5, 3, device="meta")}, r"v must be on the device of k \(cpu\).*meta"),
        ({"k": [[0.0]]}, r"k must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_value_error(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        bi_wkv(**_bad(**overrides))


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    assert resolve_backend("auto", cpu) == "cpu"
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.setenv(ENV_BACKEND, "ref")
    assert resolve_backend("auto", cpu) == "ref"
    assert resolve_backend("torch", cpu) == "torch"  # the argument wins over the variable
    monkeypatch.setenv(ENV_BACKEND, "bogus")
    with pytest.raises(ValueError, match=ENV_BACKEND):
        resolve_backend("auto", cpu)
    monkeypatch.delenv(ENV_BACKEND)
    with pytest.raises(ValueError, match="backend must be one of"):
        bi_wkv(**_bad(), backend="fast")
    with pytest.raises(ValueError, match="needs cuda tensors"):
        bi_wkv(**_bad(), backend="cuda")


def test_env_variable_routes_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(iface, "bi_wkv_ref", lambda *a: calls.append("ref") or bi_wkv_ref(*a))
    monkeypatch.setenv(ENV_BACKEND, "ref")
    bi_wkv(**_bad())
    assert calls == ["ref"]


def test_auto_falls_back_with_one_warning(monkeypatch):
    def broken(cuda=False, verbose=False):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(build, "load_extension", broken)
    monkeypatch.setattr(iface, "_WARNED", set())
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    args = _bad()
    with pytest.warns(RuntimeWarning, match="no compiler here.*python -m medurwkv_net build-ext"):
        y = bi_wkv(**args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y2 = bi_wkv(**args)  # second call: silent
    expected = bi_wkv_torch(*(args[n] for n in "wukv"))
    assert torch.equal(y, expected) and torch.equal(y2, expected)
    with pytest.raises(RuntimeError, match="no compiler here"):
        bi_wkv(**args, backend="cpu")  # explicitly requested: an error, not a fallback


def test_torchscript_and_trace_use_linear_path():
    w, u, k, v = make_inputs(2, 70, 4, dtype=torch.float32, seed=10)
    ref = bi_wkv_ref(*(x.double() for x in (w, u, k, v)))
    scripted = torch.jit.script(bi_wkv)
    assert rel(scripted(w, u, k, v), ref) < 1e-5

    class Mix(torch.nn.Module):
        def forward(self, w, u, k, v):
            return bi_wkv(w, u, k, v)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints from shapes
        traced = torch.jit.trace(Mix(), (w, u, k, v))
    assert rel(traced(w, u, k, v), ref) < 1e-5


def test_onnx_export_runs_in_onnxruntime_at_any_length(tmp_path):
    """Exported with a dynamic batch and length (the loop-free form), one file runs at other lengths and batches."""
    ort = pytest.importorskip("onnxruntime")  # a declared test dependency; present in CI

    class Mix(torch.nn.Module):
        def forward(self, w, u, k, v):
            return bi_wkv(w, u, k, v)

    args = make_inputs(2, 45, 4, dtype=torch.float32, seed=11)
    path = tmp_path / "bi_wkv.onnx"
    dyn = {0: "batch", 1: "tokens"}
    torch.onnx.export(Mix(), tuple(args), str(path), opset_version=18, dynamo=True,
                      dynamic_shapes=(None, None, dyn, dyn))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in [(2, 45), (1, 1), (3, 64), (1, 200)]:  # 200 tokens: four chunks, where 45 had one
        w, u, k, v = make_inputs(b, t, 4, dtype=torch.float32, seed=t)
        (y,) = sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), (w, u, k, v))})
        assert rel(torch.from_numpy(y), bi_wkv_ref(*(x.double() for x in (w, u, k, v)))) < 1e-5, (b, t)


@pytest.mark.parametrize("T", [1, 5, 63, 64, 65, 200])
def test_torch_path_loop_free_matches_reference_and_loop(T):
    w, u, k, v = make_inputs(2, T, 3, seed=13 + T)
    ref = bi_wkv_ref(w, u, k, v)
    for chunk in (7, 64):
        assert rel(bi_wkv_torch(w, u, k, v, chunk=chunk, loop_free=True), ref) < 1e-11
    assert rel(bi_wkv_torch(*(x.float() for x in (w, u, k, v)), loop_free=True), ref) < 1e-5
    w, u, k, v = (x.clone().requires_grad_() for x in (w * 40, u, k, v))  # also a strong decay: |w T| up to 200
    grads = []
    for loop_free in (False, True):  # gradients (float64: dw of a short sequence is ill-conditioned in float32)
        y = bi_wkv_torch(w, u, k, v, loop_free=loop_free)
        grads.append(torch.autograd.grad((y * torch.cos(y)).sum(), (w, u, k, v)))
    for a, b in zip(*grads):
        assert rel(b, a) < 1e-7


def test_torch_path_chunk_sizes_agree():
    w, u, k, v = make_inputs(2, 100, 3, seed=12)
    ref = bi_wkv_ref(w, u, k, v)
    for chunk in (1, 7, 64, 100, 1000):
        assert rel(bi_wkv_torch(w, u, k, v, chunk=chunk), ref) < 1e-11
    with pytest.raises(ValueError, match="chunk"):
        bi_wkv_torch(w, u, k, v, chunk=0)
