"""VRWKV must reproduce the official backbone's features (tests/fixtures/vrwkv_reference, paper Bi-WKV formula)."""
from __future__ import annotations

import pytest
import torch

from medurwkv_net import VRWKV, load_vrwkv_weights
from medurwkv_net.networks import vrwkv_base, vrwkv_small, vrwkv_tiny
from medurwkv_net.networks.blocks import q_shift, resize_pos_embed

NAMES = ["vrwkv_t", "vrwkv_mini", "vrwkv_mini_kn"]
_CACHE: dict = {}


def _loaded(reference_dir, name):
    """Model, vectors and load report of a reference set (vrwkv_t only from $MEDURWKV_REFERENCE_DIR)."""
    if name not in _CACHE:
        io = torch.load(reference_dir / f"{name}_io.pt", weights_only=True)
        model = VRWKV(**io["config"]).eval()
        report = load_vrwkv_weights(model, reference_dir / f"{name}_ckpt.pth")
        _CACHE[name] = (model, io, report)
    return _CACHE[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("inp,target", [("x224", "feats224_paperwkv"), ("x_odd", "feats_odd_paperwkv")])
def test_reproduces_reference_features(request, name, inp, target):
    folder = request.getfixturevalue("full_reference_dir" if name == "vrwkv_t" else "reference_dir")
    model, io, report = _loaded(folder, name)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    with torch.no_grad():
        feats = model(io[inp])
    expected = io[target]
    assert len(feats) == len(expected) == len(io["config"]["out_indices"])
    for i, (got, exp) in enumerate(zip(feats, expected)):
        assert got.shape == exp.shape, (name, i)
        err = (got - exp).abs().max().item()
        assert err < 1e-4, f"{name} {inp} output {i}: max abs error {err:.2e}"


def test_position_embedding_resize_matches_reference(reference_dir):
    model, io, _ = _loaded(reference_dir, "vrwkv_mini")
    pos = resize_pos_embed(model.pos_embed, model.pos_grid, io["patch_resolution_odd"])
    torch.testing.assert_close(pos, io["pos_embed_resized_odd"], atol=1e-6, rtol=0)
    with torch.no_grad():
        tokens, grid = model.patch_embed(io["x_odd"])
    assert grid == list(io["patch_resolution_odd"])
    torch.testing.assert_close(tokens + pos, io["embed_odd"], atol=1e-5, rtol=0)


def test_forward_intermediates_consistent(reference_dir):
    model, io, _ = _loaded(reference_dir, "vrwkv_mini_kn")
    with torch.no_grad():
        final, inter = model.forward_intermediates(io["x224"])
        feats = model(io["x224"])
    assert len(inter) == model.depth
    torch.testing.assert_close(inter[0], feats[0])  # raw residual stream of block 0
    torch.testing.assert_close(final, feats[-1])  # last block, final norm applied


def test_q_shift_directions():
    h, w, c = 3, 4, 8
    grid = torch.arange(h * w, dtype=torch.float32).reshape(h, w) + 1
    x = grid.reshape(1, h * w, 1).expand(1, h * w, c).contiguous()
    y = q_shift(x, [h, w]).reshape(h, w, c)
    left = torch.cat([torch.zeros(h, 1), grid[:, :-1]], 1)
    right = torch.cat([grid[:, 1:], torch.zeros(h, 1)], 1)
    up = torch.cat([torch.zeros(1, w), grid[:-1]], 0)
    down = torch.cat([grid[1:], torch.zeros(1, w)], 0)
    for q, exp in enumerate([left, right, up, down]):
        for ch in range(2 * q, 2 * q + 2):
            torch.testing.assert_close(y[..., ch], exp)


def test_variant_sizes():
    counts = {f.__name__: sum(p.numel() for p in f().parameters()) for f in (vrwkv_tiny, vrwkv_small, vrwkv_base)}
    head = {"vrwkv_tiny": 1000 * 193, "vrwkv_small": 1000 * 385, "vrwkv_base": 1000 * 769}
    # published sizes include the 1000-class head: 6.2M / 23.8M / 93.7M
    for name, published in (("vrwkv_tiny", 6.2e6), ("vrwkv_small", 23.8e6), ("vrwkv_base", 93.7e6)):
        assert abs(counts[name] + head[name] - published) / published < 0.01, (name, counts[name])


def test_bad_inputs():
    model = VRWKV(embed_dims=16, depth=1, out_indices=(0,))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4 dims"):
        model(torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match="out_indices"):
        VRWKV(embed_dims=16, depth=2, out_indices=(5,))
    with pytest.raises(ValueError, match="divisible by 4"):
        VRWKV(embed_dims=18, depth=1)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        VRWKV(spatial_dims=4)
    out = model(torch.zeros(1, 3, 40, 20))  # padded to a multiple of 16
    assert out[0].shape == (1, 16, 3, 2)
