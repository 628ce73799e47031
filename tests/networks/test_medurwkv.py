"""MedURWKV: shapes, errors, gradients, switches, pretrained loading, TorchScript/ONNX export, bundle check."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medurwkv_net import MedURWKV, create_medurwkv
from medurwkv_net.networks import check_finite_input

CONFIGS = Path(__file__).parent / "configs"
_NETS: dict = {}


def _net(in_ch: int, out_ch: int) -> MedURWKV:
    if (in_ch, out_ch) not in _NETS:
        torch.manual_seed(in_ch * 10 + out_ch)
        _NETS[(in_ch, out_ch)] = MedURWKV(spatial_dims=2, in_channels=in_ch, out_channels=out_ch, img_size=64).eval()
    return _NETS[(in_ch, out_ch)]


@pytest.mark.parametrize("in_ch", [1, 3, 4])
@pytest.mark.parametrize("out_ch", [1, 3, 4])
def test_channels(in_ch, out_ch):
    with torch.no_grad():
        y = _net(in_ch, out_ch)(torch.randn(2, in_ch, 64, 64))
    assert y.shape == (2, out_ch, 64, 64) and torch.isfinite(y).all()


@pytest.mark.parametrize("in_ch,out_ch,size", [(1, 3, (97, 130)), (4, 1, (97, 130)), (1, 3, (256, 256)),
                                               (3, 4, (256, 256)), (1, 1, (31, 17))])
def test_spatial_sizes(in_ch, out_ch, size):
    with torch.no_grad():
        y = _net(in_ch, out_ch)(torch.randn(1, in_ch, *size))
    assert y.shape == (1, out_ch, *size) and torch.isfinite(y).all()


def test_crop_back_is_padding_invariant():
    """A 97x130 input and the same input zero padded to 128x160 give the same output on the 97x130 region."""
    net = _net(1, 3)
    x = torch.randn(1, 1, 97, 130)
    with torch.no_grad():
        a = net(x)
        b = net(torch.nn.functional.pad(x, [0, 30, 0, 31]))
    torch.testing.assert_close(a, b[:, :, :97, :130], atol=1e-5, rtol=1e-5)


def test_parameter_count_about_14m():
    n = sum(p.numel() for p in _net(1, 3).parameters())
    assert 13.0e6 < n < 15.0e6, n


def test_bad_inputs():
    net = _net(1, 3)
    with pytest.raises(ValueError, match=r"in_channels=1 but got 3 channels \(input shape \(1, 3, 32, 32\)\)"):
        net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] \(4 dims\), got shape \(1, 1, 8, 32, 32\)"):
        net(torch.zeros(1, 1, 8, 32, 32))
    with pytest.raises(ValueError, match="got shape"):
        net(torch.zeros(1, 32, 32))
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 1, 1] = float("nan")
    with torch.no_grad():
        assert torch.isnan(net(x)).any()  # by default not checked (no device synchronisation): NaN out
    net.check_finite = True  # opt-in
    try:
        with pytest.raises(ValueError, match="contains 1 NaN and 0 Inf"):
            net(x)
        x[0, 0, 1, 1] = float("inf")
        x[0, 0, 2, 2] = -float("inf")
        with pytest.raises(ValueError, match="contains 0 NaN and 2 Inf"):
            net(x)
    finally:
        net.check_finite = False
    with pytest.raises(ValueError, match=r"MedURWKV input of shape \(1, 1, 32, 32\) contains 0 NaN and 2 Inf"):
        check_finite_input(x)


def test_bad_constructor_args():
    net3 = MedURWKV(spatial_dims=3, img_size=32, feature_size=16, bottleneck_depth=1, decoder_depths=(1, 1, 1))
    assert type(net3) is MedURWKV and net3.spatial_dims == 3  # volumes: tests/networks3d
    with pytest.raises(ValueError, match=r"loads no weights, got pretrained=True.*medurwkv_net.create_medurwkv"):
        MedURWKV(pretrained=True)
    with pytest.raises(ValueError, match="spatial_dims"):
        MedURWKV(spatial_dims=1)
    with pytest.raises(ValueError, match="in_channels"):
        MedURWKV(in_channels=0)
    with pytest.raises(ValueError, match="out_channels"):
        MedURWKV(out_channels=-1)
    with pytest.raises(ValueError, match="unknown encoder 'huge'"):
        MedURWKV(encoder="huge")
    with pytest.raises(ValueError, match="feature_size"):
        MedURWKV(feature_size=30)


def test_gradients_finite_and_reach_every_parameter():
    torch.manual_seed(1)
    net = MedURWKV(in_channels=1, out_channels=3, img_size=64).train()
    y = net(torch.randn(2, 1, 64, 96))
    torch.nn.functional.cross_entropy(y, torch.randint(0, 3, (2, 64, 96))).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} receives no gradient"


def test_freeze_and_checkpointing_match_plain_training():
    torch.manual_seed(2)
    net = MedURWKV(in_channels=1, out_channels=2, img_size=64).train()
    x = torch.randn(1, 1, 64, 64)
    net(x).square().mean().backward()
    plain = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    net.set_grad_checkpointing(True)
    net(x).square().mean().backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-5, rtol=1e-4, msg=n)
    net.set_grad_checkpointing(False)
    net.zero_grad(set_to_none=True)
    net.freeze_encoder()
    assert not any(p.requires_grad for p in net.encoder.parameters())
    net(x).square().mean().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("encoder."))
    net.unfreeze_encoder()
    assert all(p.requires_grad for p in net.parameters())


def test_autocast_bf16_cpu():
    net = _net(1, 3)
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_pretrained_true_uses_registry_through_hub_cache(vrwkv_t_checkpoint, hf_offline_cache):
    """pretrained=True resolves OpenGVLab/Vision-RWKV/vrwkv_t_in1k_224.pth via hf_hub_download (offline cache
    pre-filled with the reference checkpoint in the released format) and adapts it to 1 input channel."""
    ckpt = vrwkv_t_checkpoint
    hf_offline_cache("OpenGVLab/Vision-RWKV", {"vrwkv_t_in1k_224.pth": ckpt})
    net = create_medurwkv(in_channels=1, out_channels=2, img_size=224, pretrained=True)
    assert type(net) is MedURWKV
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(net.encoder.patch_embed.projection.weight.detach(),
                               sd["backbone.patch_embed.projection.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(net.encoder.layers[7].att.spatial_decay.detach(),
                               sd["backbone.layers.7.att.spatial_decay"])
    assert net.pretrained_source == "vrwkv_t_in1k_224"


def test_pretrained_other_variant_rejected(reference_dir):
    with pytest.raises(ValueError) as err:
        create_medurwkv(in_channels=1, out_channels=2, encoder="tiny",
                        pretrained=str(reference_dir / "vrwkv_mini_ckpt.pth"))
    msg = str(err.value)
    assert "vrwkv_mini_ckpt.pth" in msg and "pos_embed: [1, 196, 64] vs [1, 196, 192]" in msg
    assert "missing keys" in msg


def test_torchscript_trace_matches_eager():
    net = _net(1, 3)
    x = torch.randn(1, 1, 32, 64)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        ref = net(x)
        traced = torch.jit.trace(net, x, check_trace=False)
        out = traced(x)
    assert (out - ref).abs().max() < 1e-4


def test_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")  # declared in the test extras; installed in CI
    net = _net(1, 3)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref = net(x)
    path = tmp_path / "medurwkv.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["image"], output_names=["pred"],
                      opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == (1, 3, 32, 32)
    assert abs(out - ref.numpy()).max() < 1e-4


def test_monai_bundle_verify_net_in_out():
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
           "--meta_file", str(CONFIGS / "medurwkv_verify_metadata.json"),
           "--config_file", str(CONFIGS / "medurwkv_verify.json"), "--n", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "verified with no error" in proc.stdout + proc.stderr


def test_metatensor_batch_gives_the_plain_tensor_result():
    from monai.data import MetaTensor

    torch.manual_seed(0)
    net = MedURWKV(in_channels=1, out_channels=2, decoder_depths=(1, 1, 1), bottleneck_depth=1).eval()
    x = torch.randn(2, 1, 32, 48)
    meta = MetaTensor(x.clone(), meta={"filename_or_obj": "case.nii.gz"})
    meta.is_batch = True
    with torch.no_grad():
        expected = net(x)
        got = net(meta)
    assert type(got) is torch.Tensor
    assert torch.allclose(got, expected, atol=1e-6)
