"""The kernel op inside graphs: ``torch.library`` registration, ``torch.compile`` without graph breaks, and
no host reads of tensor values (the CUDA path's device synchronisations) anywhere on the op's path."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import medurwkv_net
from medurwkv_net import MedURWKV
from medurwkv_net.ops import bi_wkv, bi_wkv_ref, build

PKG = Path(medurwkv_net.__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def cpu_kernel_built():
    build.load_extension(cuda=False)


def _inputs(B=2, T=37, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g) * 8 - 5) / T
    u = (torch.rand(C, generator=g) * 8 - 5) / T
    return w, u, torch.randn(B, T, C, generator=g) * 3, torch.randn(B, T, C, generator=g) * 3


def test_ops_are_registered_with_fake_implementations():
    w, u, k, v = _inputs()
    torch.library.opcheck(torch.ops.medurwkv.bi_wkv_forward.default, (w, u, k, v))
    y, yc, lse, c0 = torch.ops.medurwkv.bi_wkv_forward(w, u, k, v)
    assert c0.shape == (2, 5) and yc.shape == k.shape
    torch.library.opcheck(torch.ops.medurwkv.bi_wkv_backward.default, (w, u, k, v, yc, lse, c0, torch.ones_like(k)))


class _Recorder:
    """A torch.compile backend (aot_eager) that records the operators of the captured graphs."""

    def __init__(self):
        self.targets = []

    def __call__(self, gm, example_inputs):
        self.targets += [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def kernel_calls(self):
        return sum("medurwkv.bi_wkv_forward" in t for t in self.targets)


def test_compiled_op_has_no_graph_break_and_matches_eager():
    w, u, k, v = _inputs()
    torch._dynamo.reset()
    rec = _Recorder()
    compiled = torch.compile(lambda *a: bi_wkv(*a, backend="cpu"), backend=rec, fullgraph=True)
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    y = compiled(*ins)
    grads = torch.autograd.grad(y, ins, torch.ones_like(y))
    ref_ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    y_ref = bi_wkv(*ref_ins, backend="cpu")
    ref_grads = torch.autograd.grad(y_ref, ref_ins, torch.ones_like(y_ref))
    assert rec.kernel_calls() == 1, rec.targets
    assert torch.equal(y, y_ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y.double(), bi_wkv_ref(*(x.double() for x in (w, u, k, v))), rtol=1e-5, atol=1e-5)


def test_compiled_medurwkv_training_step_has_no_graph_break():
    torch.manual_seed(0)
    net = MedURWKV(spatial_dims=2, in_channels=1, out_channels=2, img_size=32, feature_size=16,
                   bottleneck_depth=1, decoder_depths=(1, 1, 1))
    x = torch.randn(1, 1, 32, 32)
    torch._dynamo.reset()
    rec = _Recorder()
    compiled = torch.compile(net, backend=rec, fullgraph=True)
    y = compiled(x)
    assert rec.kernel_calls() == 12 + 1 + 3, rec.kernel_calls()  # one per VRWKV block: the kernel is in the graph
    y.square().mean().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    y_eager = net(x)
    y_eager.square().mean().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_op_reads_no_tensor_value_on_the_host(monkeypatch):
    """Forward and backward through the kernel op with every host read of a tensor value forbidden
    (on CUDA each would be a device synchronisation)."""
    w, u, k, v = _inputs()
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    y = bi_wkv(*ins, backend="cpu")
    grads = torch.autograd.grad(y, ins, torch.ones_like(y))
    monkeypatch.undo()
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (benchmarks/gpu_check.sh runs the same)")
def test_cuda_op_makes_no_device_synchronisation():
    w, u, k, v = (x.cuda() for x in _inputs())
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    bi_wkv(*ins, backend="cuda")  # first use: build / load outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = bi_wkv(*ins, backend="cuda")
        torch.autograd.grad(y, ins, torch.ones_like(y))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_kernel_sources_read_no_value_on_the_host():
    """The C++ side of the op: no .item(), no copy to the host, no synchronisation in the .cu."""
    cu = (PKG / "csrc" / "bi_wkv_cuda.cu").read_text()
    patterns = (r"\.item\s*<", r"\.cpu\(\)", r"cudaDeviceSynchronize", r"cudaStreamSynchronize", r"\.to\(torch::kCPU")
    for pattern in patterns:
        assert not re.search(pattern, cu), pattern
    iface = (PKG / "ops" / "bi_wkv_interface.py").read_text()
    for pattern in (r"\.item\(\)", r"\bbool\(torch", r"isfinite", r"\.tolist\(\)"):
        assert not re.search(pattern, iface), pattern
