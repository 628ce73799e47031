"""TorchScript: the 2D and 3D networks script, the scripted model runs at any input size and matches eager."""
from __future__ import annotations

import io

import pytest
import torch

from medurwkv_net import MedURWKV
from medurwkv_net.export import script_model

SMALL = dict(in_channels=1, out_channels=3, feature_size=16, bottleneck_depth=1, decoder_depths=(1, 1, 1))


def _net(spatial_dims: int) -> torch.nn.Module:
    torch.manual_seed(0)
    size = 64 if spatial_dims == 2 else 32
    return MedURWKV(spatial_dims=spatial_dims, img_size=size, **SMALL).eval()


def _reload(scripted: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    return torch.jit.load(buf)


def _att_code(scripted: torch.jit.ScriptModule) -> str:
    """TorchScript code of the first Bi-WKV mixing module."""
    return next(m for m in scripted.modules() if m.original_name == "SpatialMix").code


@pytest.mark.parametrize("spatial_dims, sizes", [
    (2, [(1, 1, 64, 64), (2, 1, 50, 77)]),
    (3, [(1, 1, 32, 32, 32), (1, 1, 20, 40, 33)]),
])
def test_scripted_network_runs_at_two_sizes_like_eager(spatial_dims, sizes):
    net = _net(spatial_dims)
    scripted = _reload(torch.jit.script(net))
    for shape in sizes:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = net(x)
            out = scripted(x)
        assert out.shape == (shape[0], 3, *shape[2:])
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_scripted_graph_is_plain_pytorch_and_parameter_names_are_kept():
    net = _net(2)
    scripted = torch.jit.script(net)
    code = _att_code(scripted)
    assert "bi_wkv" in code and "medurwkv.bi_wkv_forward" not in code
    graph = str(scripted.inlined_graph)
    assert "prim::PythonOp" not in graph and "aten::einsum" in graph  # the Bi-WKV scan in plain ops
    # the same names as the eager model (checkpoints of either load into the other)
    assert list(scripted.state_dict()) == list(net.state_dict())
    assert "bottleneck.0.att.spatial_decay" in net.state_dict() and "dec4.0.ffn.key.weight" in net.state_dict()


def test_script_model_with_kernel_calls_the_registered_op():
    from medurwkv_net.ops import build

    try:
        build.load_extension(cuda=False)
    except Exception as e:  # noqa: BLE001 - no compiler: nothing to call
        pytest.skip(f"CPU Bi-WKV kernel not available: {e}")
    net = _net(2)
    scripted = script_model(net, wkv_kernel=True)
    assert "ops.medurwkv.bi_wkv_forward" in _att_code(scripted)
    assert not any(m.wkv_kernel for m in net.modules() if hasattr(m, "wkv_kernel"))  # the eager model is unchanged
    for shape in [(1, 1, 64, 64), (1, 1, 40, 70)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-5)
