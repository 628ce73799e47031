"""The pretrained registry (one source of names, files and normalisation) and the builder create_medurwkv."""

from __future__ import annotations

import pytest
import torch

from medurwkv_net import MedURWKV, create_medurwkv
from medurwkv_net.pretrained import (
    ALIASES,
    PRETRAINED_CFGS,
    PretrainedCfg,
    get_pretrained_cfg,
    load_checkpoint,
    load_pretrained,
    pretrained_name_for,
    register_pretrained,
    resolve_source,
)
from medurwkv_net.pretrained.builder import pretrained_source

SMALL = dict(img_size=32, feature_size=8, bottleneck_depth=1, decoder_depths=(1, 1, 1))


def test_aliases_and_variants_resolve_in_the_registry():
    for variant, name in (("tiny", "vrwkv_t_in1k_224"), ("small", "vrwkv_s_in1k_224"), ("base", "vrwkv_b_in1k_224")):
        assert pretrained_name_for(variant) == name
        assert get_pretrained_cfg(variant) is PRETRAINED_CFGS[name] and PRETRAINED_CFGS[name].variant == variant
    for alias, name in ALIASES.items():
        assert name in PRETRAINED_CFGS, alias
    cfg = get_pretrained_cfg("vrwkv_t")
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225) and cfg.input_size == (3, 224, 224)
    with pytest.raises(ValueError, match=r"Unknown pretrained name 'vrwkv_x'; known: \[.*'tiny'"):
        get_pretrained_cfg("vrwkv_x")
    with pytest.raises(ValueError, match="no released ImageNet weights for encoder 'mini'"):
        pretrained_name_for("mini")
    with pytest.raises(ValueError, match="'tiny' is an alias of 'vrwkv_t_in1k_224'"):
        register_pretrained("tiny", cfg)


def test_bundle_normalisation_comes_from_the_registry(monkeypatch):
    from medurwkv_net.bundle import transforms

    cfg = get_pretrained_cfg("tiny")
    assert (transforms.IMAGENET_MEAN, transforms.IMAGENET_STD) == (cfg.mean, cfg.std)


def test_an_alias_is_a_weight_source(hf_offline_cache, reference_dir):
    ckpt = reference_dir / "vrwkv_mini_ckpt.pth"
    hf_offline_cache("OpenGVLab/Vision-RWKV", {"vrwkv_s_in1k_224.pth": ckpt})
    path, _ = resolve_source("small")
    assert path.endswith("vrwkv_s_in1k_224.pth")


def test_pretrained_argument_values():
    assert pretrained_source(False, "tiny") is None and pretrained_source(None, "tiny") is None
    assert pretrained_source(True, "small") == "vrwkv_s_in1k_224"
    assert pretrained_source("hf://o/r/f.pth", "tiny") == "hf://o/r/f.pth"
    for bad in ("", 1, 0.5):
        with pytest.raises(ValueError, match="pretrained must be False, True, a registry name"):
            pretrained_source(bad, "tiny")


@pytest.mark.parametrize("dims", [2, 3])
def test_builder_without_weights_is_the_plain_class(dims):
    torch.manual_seed(0)
    a = create_medurwkv(spatial_dims=dims, in_channels=1, out_channels=2, **SMALL)
    torch.manual_seed(0)
    b = MedURWKV(spatial_dims=dims, in_channels=1, out_channels=2, **SMALL)
    assert type(a) is MedURWKV and a.pretrained_source is None
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_registered_entry_loads_through_the_builder(hf_offline_cache, vrwkv_t_checkpoint, monkeypatch):
    hf_offline_cache("mirror/vrwkv", {"weights/t.pth": vrwkv_t_checkpoint})
    monkeypatch.setitem(PRETRAINED_CFGS, "mirror_t", PretrainedCfg("mirror/vrwkv", "weights/t.pth", variant="tiny"))
    raw = load_checkpoint(vrwkv_t_checkpoint)
    net = create_medurwkv(spatial_dims=2, in_channels=3, out_channels=2, pretrained="mirror_t", **SMALL)
    assert net.pretrained_source == "mirror_t"
    torch.testing.assert_close(net.encoder.layers[5].ffn.key.weight, raw["backbone.layers.5.ffn.key.weight"])
    torch.testing.assert_close(net.encoder.patch_embed.projection.weight, raw["backbone.patch_embed.projection.weight"])
    vol = MedURWKV(spatial_dims=3, in_channels=1, out_channels=2, **SMALL)
    report = load_pretrained(vol, "mirror_t")
    assert report.missing == [] and vol.pretrained_source == "mirror_t"
    w2 = raw["backbone.patch_embed.projection.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(vol.encoder.patch_embed.projection.weight.sum(-1), w2)  # inflated over depth
