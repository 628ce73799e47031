"""Gradient checkpointing has one name (``grad_checkpointing`` / ``set_grad_checkpointing``) in VRWKV and
MedURWKV, 2D and 3D; ``VRWKV.forward_intermediates`` leaves the module unchanged."""

from __future__ import annotations

import pytest
import torch

from medurwkv_net import VRWKV, MedURWKV

SMALL = dict(img_size=32, feature_size=8, bottleneck_depth=1, decoder_depths=(1, 1, 1))


def _flags(net: MedURWKV) -> list:
    return [net.grad_checkpointing, net.encoder.grad_checkpointing] + [
        s.grad_checkpointing for s in (net.bottleneck, net.dec16, net.dec8, net.dec4)
    ]


@pytest.mark.parametrize("dims", [2, 3])
def test_constructor_flag_and_method_reach_every_stack(dims):
    net = MedURWKV(spatial_dims=dims, grad_checkpointing=True, **SMALL)
    assert _flags(net) == [True] * 6
    net.set_grad_checkpointing(False)
    assert _flags(net) == [False] * 6
    net.set_grad_checkpointing()
    assert _flags(net) == [True] * 6
    assert not hasattr(net, "use_checkpoint") and not hasattr(net.encoder, "with_cp")


def test_checkpointing_recomputes_in_backward(monkeypatch):
    """With the flag on, every encoder block runs twice per training step (forward and recomputation)."""
    enc = VRWKV(embed_dims=16, depth=2, img_size=32, in_channels=1, grad_checkpointing=True).train()
    calls = []
    for blk in enc.layers:
        blk.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    enc(x)[0].sum().backward()
    assert len(calls) == 4
    calls.clear()
    enc.set_grad_checkpointing(False)
    enc(x)[0].sum().backward()
    assert len(calls) == 2


def test_deprecated_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'use_checkpoint' is deprecated; pass grad_checkpointing=True"):
        net = MedURWKV(use_checkpoint=True, **SMALL)
    assert _flags(net) == [True] * 6
    with pytest.warns(DeprecationWarning, match="'with_cp' is deprecated"):
        enc = VRWKV(embed_dims=16, depth=1, with_cp=True)
    assert enc.grad_checkpointing


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_intermediates_leaves_the_module_unchanged(dims):
    size = (32,) * dims
    enc = VRWKV(embed_dims=16, depth=4, img_size=size, in_channels=1, out_indices=(1, 3), spatial_dims=dims).eval()
    x = torch.randn((1, 1) + size)
    with torch.no_grad():
        final, inter = enc.forward_intermediates(x, indices=[0, -1])
        feats = enc(x)
    assert enc.out_indices == [1, 3]
    assert len(inter) == 2 and len(feats) == 2
    torch.testing.assert_close(final, feats[-1])
    torch.testing.assert_close(inter[1], feats[-1])


def test_forward_intermediates_is_reentrant():
    """A forward run while forward_intermediates is under way (here from a hook) sees the module's own indices."""
    enc = VRWKV(embed_dims=16, depth=3, img_size=32, in_channels=1, out_indices=(2,)).eval()
    x = torch.randn(1, 1, 32, 32)
    inner = []

    def hook(*_):
        if not inner:
            inner.append(None)
            inner.append(enc(x))

    handle = enc.layers[0].register_forward_hook(hook)
    with torch.no_grad():
        inter = enc.forward_intermediates(x, intermediates_only=True)
    handle.remove()
    assert len(inter) == 3
    assert len(inner[1]) == 1  # the module's out_indices (2,), not the 3 blocks asked for above
    with pytest.raises(ValueError, match="forward_intermediates: indices entry 5 is out of range for depth 3"):
        enc.forward_intermediates(x, indices=[5])
