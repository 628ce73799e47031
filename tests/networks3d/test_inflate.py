"""Inflating the 2D ImageNet Vision-RWKV weights to the 3D encoder, checked by its identity: a volume made of
identical slices gets, at every depth, exactly the 2D patch (and position) embedding of one slice."""
from __future__ import annotations

import pytest
import torch

from medurwkv_net.networks.vrwkv import vrwkv_tiny
from medurwkv_net.networks.volumetric import MedURWKV3D, VRWKV3D
from medurwkv_net.pretrained import create_medurwkv, load_checkpoint, load_vrwkv_weights
from medurwkv_net.pretrained.inflate import (
    inflate_patch_weight,
    inflate_pos_embed,
    inflate_state_dict,
    load_inflated_vrwkv_weights,
)


def _encoders(ckpt, patch, img_size):
    enc2 = vrwkv_tiny(in_channels=1).eval()
    load_vrwkv_weights(enc2, str(ckpt))
    enc3 = VRWKV3D(img_size=img_size, patch_size=patch, in_channels=1, **_tiny_cfg()).eval()
    report = load_inflated_vrwkv_weights(enc3, str(ckpt))
    assert not (report.missing or report.unexpected or report.mismatched) and report.source.endswith("vrwkv_t_ckpt.pth")
    return enc2, enc3


def _tiny_cfg():
    from medurwkv_net.networks.vrwkv import VRWKV_VARIANTS

    return dict(VRWKV_VARIANTS["tiny"])


@pytest.mark.parametrize("patch,depth_slices", [((16, 16, 16), 32), ((16, 16, 4), 12)])
def test_identical_slices_give_the_2d_patch_embedding(vrwkv_t_checkpoint, patch, depth_slices):
    h, w = 48, 80
    enc2, enc3 = _encoders(vrwkv_t_checkpoint, patch, (h, w, depth_slices))
    enc2, enc3 = enc2.double(), enc3.double()  # float64: the identity is exact up to rounding
    image = torch.randn(2, 1, h, w, dtype=torch.float64)
    volume = image.unsqueeze(-1).expand(-1, -1, -1, -1, depth_slices).contiguous()
    with torch.no_grad():
        t2, g2 = enc2.patch_embed(image)
        t3, g3 = enc3.patch_embed(volume)
        gd = depth_slices // patch[2]
        assert g3 == g2 + [gd]
        t3 = t3.reshape(2, g2[0], g2[1], gd, -1)
        for z in range(gd):
            torch.testing.assert_close(t3[:, :, :, z].reshape(2, -1, t2.shape[-1]), t2, rtol=0, atol=1e-10)
        # the position embedding too: the 3D grid of img_size needs no resize, the 2D one is resized from 14x14
        from medurwkv_net.networks.blocks import resize_pos_embed

        p2 = resize_pos_embed(enc2.pos_embed, enc2.pos_grid, g2, "bicubic")
        p3 = resize_pos_embed(enc3.pos_embed, enc3.pos_grid, g3, "trilinear").reshape(1, g2[0], g2[1], gd, -1)
        for z in range(gd):
            torch.testing.assert_close(p3[:, :, :, z].reshape(1, -1, p2.shape[-1]), p2, rtol=0, atol=1e-7)
    # a different slice in the volume breaks the identity (the test can fail)
    volume[..., 0] += 1.0
    with torch.no_grad():
        t3b, _ = enc3.patch_embed(volume)
    assert (t3b.reshape(2, g2[0], g2[1], gd, -1)[:, :, :, 0].reshape(2, -1, t2.shape[-1]) - t2).abs().max() > 1e-3


def test_blocks_copied_and_rule_on_the_kernel(vrwkv_t_checkpoint):
    raw = load_checkpoint(vrwkv_t_checkpoint)
    net = create_medurwkv(spatial_dims=3, in_channels=1, out_channels=2, img_size=(32, 32, 16), patch_size=(16, 16, 8),
                          feature_size=16, bottleneck_depth=1, decoder_depths=(1, 1, 1),
                          pretrained=str(vrwkv_t_checkpoint))
    own = net.encoder.state_dict()
    torch.testing.assert_close(own["layers.3.att.key.weight"], raw["backbone.layers.3.att.key.weight"])
    torch.testing.assert_close(own["ln1.weight"], raw["backbone.ln1.weight"])
    w2 = raw["backbone.patch_embed.projection.weight"]  # [192, 3, 16, 16]
    expected = (w2.sum(1, keepdim=True) / 8).unsqueeze(-1).expand(-1, -1, -1, -1, 8)
    torch.testing.assert_close(own["patch_embed.projection.weight"], expected)
    torch.testing.assert_close(own["patch_embed.projection.bias"], raw["backbone.patch_embed.projection.bias"])
    assert net.pretrained_source.endswith("vrwkv_t_ckpt.pth")
    with torch.no_grad():
        assert torch.isfinite(net.eval()(torch.randn(1, 1, 32, 32, 16))).all()


def test_in_plane_resize_keeps_the_response_to_a_constant_image():
    w2 = torch.randn(6, 1, 16, 16)
    w3 = inflate_patch_weight(w2, (8, 8, 4))
    assert w3.shape == (6, 1, 8, 8, 4)
    torch.testing.assert_close(w3.sum((1, 2, 3, 4)), w2.sum((1, 2, 3)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"2D kernel \[C, Cin, kh, kw\], got shape \(6, 1, 16\)"):
        inflate_patch_weight(w2[..., 0], (8, 8, 4))


def test_pos_embed_replicated_over_depth_and_errors():
    pos = torch.randn(1, 16, 8)
    out = inflate_pos_embed(pos, (4, 4, 3)).reshape(1, 4, 4, 3, 8)
    for z in range(3):
        torch.testing.assert_close(out[:, :, :, z].reshape(1, 16, 8), pos)
    with pytest.raises(ValueError, match="not a square 2D grid"):
        inflate_pos_embed(torch.randn(1, 15, 8), (4, 4, 3))
    with pytest.raises(ValueError, match=r"must be a 3D VRWKV \(spatial_dims=3\)"):
        inflate_state_dict({"pos_embed": pos}, vrwkv_tiny())


def test_other_variant_rejected_with_the_source_named(reference_dir):
    with pytest.raises(ValueError) as err:
        create_medurwkv(spatial_dims=3, in_channels=1, out_channels=2, img_size=32,
                        pretrained=str(reference_dir / "vrwkv_mini_ckpt.pth"))
    msg = str(err.value)
    assert "vrwkv_mini_ckpt.pth (inflated to 3D)" in msg and "checkpoint: embed_dims=64, depth=4" in msg
    assert "mis-shaped keys" in msg and "144 missing keys" in msg


def test_create_medurwkv_spatial_dims_3_builds_the_volumetric_model(vrwkv_t_checkpoint):
    from medurwkv_net import MedURWKV, create_medurwkv

    net = create_medurwkv(spatial_dims=3, in_channels=1, out_channels=2, img_size=32, patch_size=(16, 16, 8),
                          feature_size=16, bottleneck_depth=1, decoder_depths=(1, 1, 1),
                          pretrained=str(vrwkv_t_checkpoint))
    assert type(net) is MedURWKV and net.spatial_dims == 3
    raw = load_checkpoint(vrwkv_t_checkpoint)
    torch.testing.assert_close(net.encoder.layers[0].att.value.weight, raw["backbone.layers.0.att.value.weight"])
    net.freeze_encoder()
    assert not any(p.requires_grad for p in net.encoder.parameters()) and net.out.weight.requires_grad
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 20, 17, 9)).shape == (1, 2, 20, 17, 9)
    assert type(MedURWKV(3, 1, 2, 32)) is MedURWKV and type(MedURWKV(2, 1, 2, 32)) is MedURWKV
    assert isinstance(MedURWKV3D(in_channels=1, out_channels=2, img_size=32), MedURWKV)
