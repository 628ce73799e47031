"""One Med-URWKV class for 2D and 3D, whose checkpoints of earlier releases load unchanged.

The fixtures were written by the release before the 2D and 3D networks became one class
(tests/fixtures/make_medurwkv_v0.py); they load strictly into today's network and give the outputs saved then.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from medurwkv_net import MedURWKV, MedURWKV3D
from medurwkv_net.networks.vrwkv import VRWKV_VARIANTS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def mini_variants(monkeypatch):
    """Register the fixtures' miniature encoder variants for one test."""
    payload = torch.load(FIXTURES / "medurwkv_2d_v0.pt", weights_only=True)
    for name, cfg in payload["mini_variants"].items():
        monkeypatch.setitem(VRWKV_VARIANTS, name, dict(cfg))


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_checkpoint_of_the_previous_release_loads_strictly_and_gives_its_output(dims, mini_variants):
    payload = torch.load(FIXTURES / f"medurwkv_{dims}_v0.pt", weights_only=True)
    torch.manual_seed(123)  # another initialisation than the one saved: only the loaded weights can match
    net = MedURWKV(**payload["config"]).eval()
    before = net(payload["input"]).detach()
    assert (before - payload["output"]).abs().max() > 0.1  # the comparison below can fail
    net.load_state_dict(payload["state_dict"], strict=True)
    assert type(net) is MedURWKV and isinstance(net, MedURWKV) and net.spatial_dims == int(dims[0])
    with torch.no_grad():
        out = net(payload["input"])
    # outputs of magnitude ~1: the Bi-WKV path taken (C++ kernel or PyTorch) and the torch build move them by
    # float32 rounding (up to 3e-5 seen), other weights by more than 0.1
    torch.testing.assert_close(out, payload["output"], rtol=1e-4, atol=1e-4)


def test_3d_checkpoint_loads_into_the_kept_3d_name(mini_variants):
    payload = torch.load(FIXTURES / "medurwkv_3d_v0.pt", weights_only=True)
    cfg = {k: v for k, v in payload["config"].items() if k != "spatial_dims"}
    net = MedURWKV3D(**cfg).eval()
    net.load_state_dict(payload["state_dict"], strict=True)
    assert isinstance(net, MedURWKV) and net.spatial_dims == 3
    with torch.no_grad():
        torch.testing.assert_close(net(payload["input"]), payload["output"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_full_size_parameter_names_and_shapes_are_those_of_the_previous_release(dims):
    saved = json.loads((FIXTURES / "medurwkv_keys_v0.json").read_text())[dims]
    net = MedURWKV(spatial_dims=int(dims[0]), in_channels=1, out_channels=2)
    got = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert got == saved


def test_one_class_for_both_dims_and_its_errors():
    small = dict(img_size=32, feature_size=16, bottleneck_depth=1, decoder_depths=(1, 1, 1))
    nets = {d: MedURWKV(spatial_dims=d, in_channels=1, out_channels=2, **small) for d in (2, 3)}
    assert all(type(n) is MedURWKV for n in nets.values())
    assert nets[2].encoder.spatial_dims == 2 and nets[3].encoder.spatial_dims == 3
    assert [k for k in nets[2].state_dict()] == [k for k in nets[3].state_dict()]  # same names in 2D and 3D
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        MedURWKV(spatial_dims=4)
    with pytest.raises(ValueError, match="patch_size must be an int multiple of 4 in 2D, got 6"):
        MedURWKV(spatial_dims=2, patch_size=6)
    with pytest.raises(ValueError, match=r"MedURWKV3D: spatial_dims must be 3, got 2"):
        MedURWKV3D(spatial_dims=2)
    with pytest.raises(ValueError, match=r"expects input of shape \[B, C, H, W\] \(4 dims\)"):
        nets[2](torch.zeros(1, 1, 8, 8, 8))


def test_networks_do_not_import_pretrained_or_anything_above():
    import subprocess

    code = (
        "import sys, medurwkv_net.networks as n; n.MedURWKV(spatial_dims=3, img_size=32, feature_size=8); "
        "bad = sorted(m for m in sys.modules if m.startswith(('medurwkv_net.pretrained', 'medurwkv_net.bundle', "
        "'medurwkv_net.data', 'medurwkv_net.reliability', 'medurwkv_net.hub'))); print(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
