"""Volumetric Med-URWKV: 3D Q-Shift, shapes at odd sizes, gradients, switches, errors, sliding window,
TorchScript / ONNX export."""
from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from medurwkv_net.networks.blocks import q_shift
from medurwkv_net.networks.volumetric import MedURWKV3D, VolumePatchEmbed, VolumePatchExpand, VRWKV3D

_NETS: dict = {}


def _net(patch=16, in_ch=1, out_ch=3) -> MedURWKV3D:
    """Tiny decoder (the encoder is VRWKV-T as in the released checkpoints)."""
    key = (str(patch), in_ch, out_ch)
    if key not in _NETS:
        torch.manual_seed(1)
        _NETS[key] = MedURWKV3D(in_channels=in_ch, out_channels=out_ch, img_size=32, patch_size=patch, feature_size=16,
                                bottleneck_depth=1, decoder_depths=(1, 1, 1)).eval()
    return _NETS[key]


def test_q_shift_3d_six_neighbours_channel_sixths():
    grid = [3, 4, 5]
    c = 12
    x = torch.randn(2, 3 * 4 * 5, c)
    y = q_shift(x, grid).reshape(2, 3, 4, 5, c)
    xs = x.reshape(2, 3, 4, 5, c)
    d, h, w = 1, 2, 3
    expected = [xs[:, d, h, w - 1], xs[:, d, h, w + 1], xs[:, d, h - 1, w], xs[:, d, h + 1, w],
                xs[:, d - 1, h, w], xs[:, d + 1, h, w]]
    for g in range(6):
        lo, hi = 2 * g, 2 * g + 2
        torch.testing.assert_close(y[:, d, h, w, lo:hi], expected[g][:, lo:hi], rtol=0, atol=0)
    # zero fill at the borders: the first sixth has no left neighbour at w = 0, the last none at d = 2
    assert y[:, :, :, 0, 0:2].abs().max() == 0 and y[:, 2, :, :, 10:12].abs().max() == 0
    assert y[:, :, :, 1:, 0:2].abs().min() > 0


@pytest.mark.parametrize("size", [(33, 20, 17), (32, 32, 32), (5, 47, 31), (1, 1, 1)])
def test_shapes_odd_volume_sizes(size):
    with torch.no_grad():
        y = _net()(torch.randn(1, 1, *size))
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()


def test_batch_channels_and_anisotropic_patch():
    net = _net(patch=(16, 16, 8), in_ch=2, out_ch=4)
    assert (net.encoder.pos_grid == [2, 2, 4]
            and list(net.encoder.patch_embed.projection.weight.shape[2:]) == [16, 16, 8])
    with torch.no_grad():
        y = net(torch.randn(2, 2, 40, 23, 9))
    assert y.shape == (2, 4, 40, 23, 9) and torch.isfinite(y).all()
    tokens, grid = VolumePatchEmbed(1, 8, (16, 16, 4))(torch.randn(1, 1, 33, 16, 10))
    assert grid == [3, 1, 3] and tokens.shape == (1, 9, 8)


def test_volume_patch_expand_orders_voxels():
    exp = VolumePatchExpand(2, 1, (2, 1, 3))
    with torch.no_grad():
        exp.expand.weight.zero_()
        for j in range(6):  # output voxel (a, 0, c) of a token gets the value 10 * token + j, j = a * 3 + c
            exp.expand.weight[j, 0] = 10.0
            exp.expand.weight[j, 1] = float(j)
    exp.norm = torch.nn.Identity()
    x = torch.stack([torch.arange(4.0), torch.ones(4)], -1)[None]  # grid [1, 2, 2]
    y, g = exp(x, [1, 2, 2])
    assert g == [2, 2, 6]
    vol = y.reshape(2, 2, 6)
    for t in range(4):
        gy, gz = divmod(t, 2)
        for a in range(2):
            for c in range(3):
                assert vol[a, gy, gz * 3 + c] == 10 * t + a * 3 + c


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = MedURWKV3D(in_channels=1, out_channels=2, img_size=32, feature_size=16, bottleneck_depth=1,
                     decoder_depths=(1, 1, 1)).train()
    # 64x64x32: the stride-32 bottleneck holds 2x2x1 tokens (with one token the WKV output is v alone)
    x = torch.randn(1, 1, 64, 64, 32, requires_grad=True)
    target = torch.randint(0, 2, (1, 64, 64, 32))
    torch.nn.functional.cross_entropy(net(x), target).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    zero = [n for n, p in net.named_parameters() if p.grad.abs().max() == 0]
    assert not zero, zero
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    net = MedURWKV3D(in_channels=1, out_channels=2, img_size=32, feature_size=16, bottleneck_depth=1,
                     decoder_depths=(1, 1, 1)).train()
    x = torch.randn(1, 1, 32, 32, 16)
    net(x).square().mean().backward()
    ref = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    net.set_grad_checkpointing(True)
    net(x).square().mean().backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_freeze_unfreeze_encoder():
    net = MedURWKV3D(in_channels=1, out_channels=2, img_size=32, feature_size=16, bottleneck_depth=1,
                     decoder_depths=(1, 1, 1))
    net.freeze_encoder()
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("encoder."))
    net.unfreeze_encoder()
    assert all(p.requires_grad for p in net.parameters())


def test_bad_inputs_and_arguments():
    net = _net()
    with pytest.raises(ValueError, match=r"\[B, C, H, W, D\].*got shape \(1, 1, 32, 32\)"):
        net(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="in_channels=1 but got 2 channels"):
        net(torch.zeros(1, 2, 8, 8, 8))
    x = torch.zeros(1, 1, 8, 8, 8)
    x[0, 0, 1, 2, 3] = float("nan")
    net.check_finite = True  # opt-in (off by default: a device synchronisation per call)
    with pytest.raises(ValueError, match="contains 1 NaN and 0 Inf"):
        net(x)
    net.check_finite = False
    with pytest.raises(ValueError, match="multiple of 4"):
        MedURWKV3D(patch_size=(16, 16, 6))
    with pytest.raises(ValueError, match="patch_size must be an int or 3 ints"):
        MedURWKV3D(patch_size=(16, 16))
    with pytest.raises(ValueError, match="spatial_dims must be 3"):
        MedURWKV3D(spatial_dims=2)
    with pytest.raises(ValueError, match="unknown encoder 'huge'"):
        MedURWKV3D(encoder="huge")
    with pytest.raises(ValueError, match="img_size"):
        VRWKV3D(img_size=(96, 96))
    with pytest.raises(ValueError,
                       match=r"VRWKV3D expects a \[B, C, H, W, D\] input \(5 dims\), got shape \(1, 1, 32, 32\)"):
        VRWKV3D(embed_dims=12, depth=1)(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="interpolate_mode"):
        VRWKV3D(interpolate_mode="bicubic")


def test_encoder_position_embedding_resized_trilinearly():
    enc = VRWKV3D(embed_dims=24, depth=2, img_size=(32, 32, 16), patch_size=(16, 16, 8), out_indices=(1,)).eval()
    assert enc.pos_embed.shape == (1, 2 * 2 * 2, 24)
    with torch.no_grad():
        feats = enc(torch.randn(1, 1, 64, 40, 17))
    assert feats[0].shape == (1, 24, 4, 3, 3)


def test_sliding_window_inference_on_a_larger_volume():
    net = _net()
    vol = torch.randn(1, 1, 50, 41, 37)
    with torch.no_grad():
        y = sliding_window_inference(vol, roi_size=(32, 32, 32), sw_batch_size=2, predictor=net, overlap=0.25)
        whole = net(vol[..., :32, :32, :32])
    assert y.shape == (1, 3, 50, 41, 37) and torch.isfinite(y).all()
    assert not torch.allclose(y[..., :32, :32, :32], whole, atol=1e-3)  # blended windows, not one forward


def test_torchscript_trace_matches_eager():
    net = _net()
    x = torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        ref = net(x)
        traced = torch.jit.trace(net, x, check_trace=False)
        out = traced(x)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-4


def test_onnx_export_matches_eager(tmp_path):
    import onnxruntime as ort

    net = _net()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = net(x)
    path = tmp_path / "medurwkv3d.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["image"], output_names=["pred"],
                      opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == (1, 3, 32, 32, 32)
    assert abs(out - ref.numpy()).max() < 1e-4
