"""Weight loading: local .pth/.safetensors, hf:// through hf_hub_download (offline cache), registry + sha256,
conversion CLI, in_channels adaptation, and clear errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medurwkv_net import VRWKV, convert_weights, load_vrwkv_weights
from medurwkv_net.pretrained import (
    PRETRAINED_CFGS,
    PretrainedCfg,
    adapt_input_conv,
    checkpoint_filter_fn,
    hub_sha256,
    register_pretrained,
)
from medurwkv_net.reliability import WeightsIntegrityError, file_sha256

REPO = "testowner/vision-rwkv-ref"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def mini(reference_dir):
    io = torch.load(reference_dir / "vrwkv_mini_io.pt", weights_only=True)
    return io, reference_dir / "vrwkv_mini_ckpt.pth"


def _features(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _assert_reference(feats, expected):
    for got, exp in zip(feats, expected):
        assert (got - exp).abs().max().item() < 1e-4


def test_hf_offline_cache_gives_reference(mini, hf_offline_cache):
    io, ckpt = mini
    hf_offline_cache(REPO, {"weights/vrwkv_mini.pth": ckpt}, commit=COMMIT)
    local = VRWKV(**io["config"])
    load_vrwkv_weights(local, ckpt)
    for source in (f"hf://{REPO}/weights/vrwkv_mini.pth", f"hf://{REPO}/weights/vrwkv_mini.pth@{COMMIT}"):
        model = VRWKV(**io["config"])
        report = load_vrwkv_weights(model, source)
        assert "snapshots" in report.source and report.source.endswith("vrwkv_mini.pth")
        for (k, a), b in zip(model.state_dict().items(), local.state_dict().values()):
            assert torch.equal(a, b), k
        _assert_reference(_features(model, io["x_odd"]), io["feats_odd_paperwkv"])


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_hub_download_checked_against_published_sha256(mini, hf_offline_cache, monkeypatch, damage):
    """Without a pinned hash, a Hub file is checked against the SHA-256 the Hub published for it
    (the blob name in the huggingface_hub cache); a damaged cached copy is refused, not loaded."""
    io, ckpt = mini
    cache = hf_offline_cache("OpenGVLab/Vision-RWKV", {"vrwkv_mini_test.pth": ckpt})
    published = file_sha256(ckpt)
    monkeypatch.setitem(PRETRAINED_CFGS, "mini_unpinned",
                        PretrainedCfg("OpenGVLab/Vision-RWKV", "vrwkv_mini_test.pth", variant="mini"))
    model = VRWKV(**io["config"])
    report = load_vrwkv_weights(model, "mini_unpinned")
    assert hub_sha256(report.source) == published
    _assert_reference(_features(model, io["x224"]), io["feats224_paperwkv"])

    blob = next(cache.glob(f"models--OpenGVLab--Vision-RWKV/blobs/{published}"))
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:-1] + bytes([data[-1] ^ 1]))
    damaged = file_sha256(blob)
    fresh = VRWKV(**io["config"])
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    for source in ("mini_unpinned", "hf://OpenGVLab/Vision-RWKV/vrwkv_mini_test.pth"):
        with pytest.raises(WeightsIntegrityError, match=f"vrwkv_mini_test.pth.*expected {published}, got {damaged}"):
            load_vrwkv_weights(fresh, source)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_hub_sha256_only_for_cache_blobs(tmp_path, mini):
    _, ckpt = mini
    assert hub_sha256(ckpt) is None
    named = tmp_path / "blobs" / ("a" * 64)
    named.parent.mkdir()
    named.write_bytes(b"x")
    link = tmp_path / "weights.pth"
    link.symlink_to(named)
    assert hub_sha256(link) == "a" * 64
    assert hub_sha256(tmp_path / "blobs" / "notahash") is None


def test_hf_missing_file_names_repo_and_file(hf_offline_cache):
    hf_offline_cache(REPO, {}, commit=COMMIT)
    with pytest.raises(FileNotFoundError, match="nothere.pth.*testowner/vision-rwkv-ref"):
        load_vrwkv_weights(VRWKV(embed_dims=64, depth=4), f"hf://{REPO}/nothere.pth")


def test_registry_sha256_verified(mini, hf_offline_cache, monkeypatch):
    io, ckpt = mini
    hf_offline_cache("OpenGVLab/Vision-RWKV", {"vrwkv_mini_test.pth": ckpt})
    good = file_sha256(ckpt)
    monkeypatch.setitem(PRETRAINED_CFGS, "mini_good",
                        PretrainedCfg("OpenGVLab/Vision-RWKV", "vrwkv_mini_test.pth", sha256=good, variant="mini"))
    model = VRWKV(**io["config"])
    load_vrwkv_weights(model, "mini_good")
    _assert_reference(_features(model, io["x224"]), io["feats224_paperwkv"])
    bad = "0" * 64
    monkeypatch.setitem(PRETRAINED_CFGS, "mini_bad",
                        PretrainedCfg("OpenGVLab/Vision-RWKV", "vrwkv_mini_test.pth", sha256=bad, variant="mini"))
    with pytest.raises(WeightsIntegrityError,
                       match=f"sha256 mismatch.*vrwkv_mini_test.pth.*expected {bad}, got {good}"):
        load_vrwkv_weights(VRWKV(**io["config"]), "mini_bad")
    with pytest.raises(ValueError, match="already registered"):
        register_pretrained("mini_good", PRETRAINED_CFGS["mini_good"])


def test_registry_names_point_to_released_files():
    for name, variant in (("vrwkv_t_in1k_224", "tiny"), ("vrwkv_s_in1k_224", "small"), ("vrwkv_b_in1k_224", "base")):
        cfg = PRETRAINED_CFGS[name]
        assert cfg.hf_hub_id == "OpenGVLab/Vision-RWKV" and cfg.filename == f"{name}.pth" and cfg.variant == variant


def test_wrappers_and_safetensors(mini, tmp_path):
    io, ckpt = mini
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.save({"model": sd}, tmp_path / "wrapped.pth")
    torch.save({k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}, tmp_path / "raw.pth")
    out = convert_weights(str(ckpt), str(tmp_path / "mini.safetensors"))
    for src in (tmp_path / "wrapped.pth", tmp_path / "raw.pth", out):
        model = VRWKV(**io["config"])
        load_vrwkv_weights(model, src)
        _assert_reference(_features(model, io["x224"]), io["feats224_paperwkv"])
    with pytest.raises(FileExistsError):
        convert_weights(str(ckpt), out)
    with pytest.raises(ValueError, match="must end with .safetensors"):
        convert_weights(str(ckpt), str(tmp_path / "x.pth"))


def test_convert_weights_cli(mini, tmp_path):
    io, ckpt = mini
    out = tmp_path / "cli.safetensors"
    proc = subprocess.run([sys.executable, "-m", "medurwkv_net", "convert-weights", str(ckpt), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    tensors = load_file(out)
    assert not any(k.startswith(("backbone.", "head.")) for k in tensors)
    assert tensors["pos_embed"].shape == (1, 196, 64)


def test_other_variant_checkpoint_is_rejected_with_shapes(mini):
    _, ckpt = mini
    with pytest.raises(ValueError) as err:
        load_vrwkv_weights(VRWKV(embed_dims=192, depth=12), ckpt)
    msg = str(err.value)
    assert "vrwkv_mini_ckpt.pth" in msg
    assert "pos_embed: [1, 196, 64] vs [1, 196, 192]" in msg
    assert "missing keys" in msg and "layers.4." in msg
    report = None
    with pytest.warns(UserWarning, match="mis-shaped"):
        report = load_vrwkv_weights(VRWKV(embed_dims=192, depth=12), ckpt, strict=False)
    assert ("pos_embed", (1, 196, 64), (1, 196, 192)) in report.mismatched


def test_unexpected_keys_reported(mini, tmp_path):
    io, ckpt = mini
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    sd["backbone.extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": sd}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"1 unexpected keys: \['extra.weight'\]"):
        load_vrwkv_weights(VRWKV(**io["config"]), tmp_path / "extra.pth")


def test_bad_sources(tmp_path):
    model = VRWKV(embed_dims=16, depth=1)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_vrwkv_weights(model, tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="hf://owner/repo"):
        load_vrwkv_weights(model, "hf://onlyowner/file.pth")
    with pytest.raises(ValueError, match="Unknown weight source 'not_a_model'"):
        load_vrwkv_weights(model, "not_a_model")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.pth"):
        load_vrwkv_weights(model, tmp_path / "junk.pth")
    torch.save({"state_dict": {"a": 1}}, tmp_path / "nontensor.pth")
    with pytest.raises(ValueError, match="not tensors"):
        load_vrwkv_weights(model, tmp_path / "nontensor.pth")


def test_in_channels_adaptation(mini):
    io, ckpt = mini
    rgb = VRWKV(**io["config"])
    load_vrwkv_weights(rgb, ckpt)
    grey = VRWKV(**{**io["config"], "in_channels": 1})
    load_vrwkv_weights(grey, ckpt)
    g = io["x224"][:1, :1]
    for a, b in zip(_features(grey, g), _features(rgb, g.expand(-1, 3, -1, -1))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    w = torch.randn(8, 3, 2, 2)
    four = adapt_input_conv(w, 4)
    assert four.shape == (8, 4, 2, 2)
    for i in range(4):
        torch.testing.assert_close(four[:, i], w.sum(1) / 4)
    torch.testing.assert_close(four.sum(1), w.sum(1))  # equal channels g give the response of (g, g, g)
    assert torch.equal(adapt_input_conv(w, 3), w)


def test_pos_embed_resized_to_model_grid(mini):
    io, ckpt = mini
    model = VRWKV(**{**io["config"], "img_size": 256})
    load_vrwkv_weights(model, ckpt)
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    expected = torch.nn.functional.interpolate(
        sd["backbone.pos_embed"].reshape(1, 14, 14, -1).permute(0, 3, 1, 2), size=(16, 16), mode="bicubic",
        align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    assert "head.fc.weight" not in checkpoint_filter_fn(sd)
