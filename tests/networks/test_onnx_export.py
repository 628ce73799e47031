"""ONNX export with dynamic sizes: one file runs in onnxruntime at sizes other than the traced one (not multiples
of 32, other padded patch grids, other batch sizes) like the eager network, and stores the weights once.

The networks are small (a 4-block, 64-wide encoder registered for these tests only, one decoder block), so each
export takes about a minute on 2 CPU cores; the 2D export goes through ``medurwkv-net export-onnx`` as a bundle
user runs it (config + state dict), the 3D one through :func:`medurwkv_net.onnx_export.export_onnx`.
"""
from __future__ import annotations

import json

import pytest
import torch

from medurwkv_net import MedURWKV
from medurwkv_net.cli import main
from medurwkv_net.networks.vrwkv import VRWKV_VARIANTS
from medurwkv_net.onnx_export import compare_onnx, export_onnx

onnx = pytest.importorskip("onnx")  # the export extra; declared in the test extras too
pytest.importorskip("onnxruntime")

ENCODER = "onnx_test"  # a small encoder variant registered while the networks are built
SMALL = dict(encoder=ENCODER, out_indices=(0, 1, 2, 3), feature_size=16, bottleneck_depth=0,
             decoder_depths=(0, 0, 1))


@pytest.fixture(scope="module")
def small_encoder():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(VRWKV_VARIANTS, ENCODER,
                   dict(embed_dims=64, depth=4, post_norm=False, init_values=None, key_norm=False))
        yield


def _param_bytes(net: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())


@pytest.fixture(scope="module")
def export_2d(small_encoder, tmp_path_factory):
    """A trained-looking 2D network written as a bundle would hold it, exported with the command line."""
    folder = tmp_path_factory.mktemp("bundle")
    config = {"network_def": dict(_target_="medurwkv_net.MedURWKV", spatial_dims=2, in_channels=1, out_channels=3,
                                  img_size=64, pretrained=False, **SMALL)}
    (folder / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(3)
    net = MedURWKV(spatial_dims=2, in_channels=1, out_channels=3, img_size=64, **SMALL).eval()
    with torch.no_grad():  # decays and bonuses away from their initial values, as after training
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(net.state_dict(), folder / "model.pt")
    path = folder / "model.onnx"
    main(["export-onnx", "--filepath", str(path), "--config_file", str(folder / "inference.json"),
          "--ckpt_file", str(folder / "model.pt"), "--size", "[64,96]"])
    return net, path


def test_2d_onnx_runs_at_other_sizes_like_eager(export_2d):
    net, path = export_2d
    # traced at 64x96 (padded grid 2x3 at stride 32); these pad to 64x96, 128x64 and 160x128
    rows = compare_onnx(path, net, [(1, 1, 50, 70), (2, 1, 97, 64), (3, 1, 130, 100), (1, 1, 1, 1)])
    for shape, err, scale in rows:
        assert scale > 0.1 and err < 1e-4, (shape, err)


def test_2d_onnx_names_axes_and_stores_weights_once(export_2d):
    net, path = export_2d
    model = onnx.load(str(path))
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (model.graph.input[0], model.graph.output[0])]
    assert [v.name for v in (model.graph.input[0], model.graph.output[0])] == ["image", "pred"]
    assert dims == [["batch", 1, "height", "width"], ["batch", 3, "height", "width"]]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    state = net.state_dict()
    assert set(state) <= set(inits)  # every parameter under its own name ...
    for name, value in state.items():
        assert torch.equal(torch.from_numpy(inits[name].copy()), value), name
    assert sum(a.nbytes for a in inits.values()) < 1.1 * _param_bytes(net)  # ... and nothing stored twice
    assert path.stat().st_size < 1.5 * _param_bytes(net)
    assert not any(p.key for n in model.graph.node for p in n.metadata_props)  # no source paths in the file


def test_3d_onnx_runs_at_other_sizes_like_eager(small_encoder, tmp_path):
    torch.manual_seed(4)
    net = MedURWKV(spatial_dims=3, in_channels=2, out_channels=2, img_size=32, patch_size=(16, 16, 8), **SMALL)
    net.train()
    path = export_onnx(net, tmp_path / "model3d.onnx", torch.randn(1, 2, 40, 36, 20))  # batch 1: traced as 2
    assert net.training  # the mode is restored
    rows = compare_onnx(path, net, [(1, 2, 40, 36, 20), (2, 2, 33, 70, 17), (1, 2, 20, 40, 41)])
    for shape, err, scale in rows:
        assert scale > 0.1 and err < 1e-4, (shape, err)
    assert path.stat().st_size < 1.5 * _param_bytes(net)


def test_bad_examples_are_refused_before_tracing(small_encoder, tmp_path):
    net = MedURWKV(spatial_dims=2, in_channels=1, out_channels=2, img_size=64, **SMALL)
    with pytest.raises(ValueError, match=r"shape \(2, 1, 1, 64\) has a spatial size below 2"):
        export_onnx(net, tmp_path / "a.onnx", torch.randn(2, 1, 1, 64))
    with pytest.raises(ValueError, match=r"floating \[B, C, \*spatial\] tensor, got shape \(64, 64\)"):
        export_onnx(net, tmp_path / "a.onnx", torch.randn(64, 64))
    with pytest.raises(ValueError, match="cannot tell the input shape of Linear.*pass example_input"):
        export_onnx(torch.nn.Linear(3, 3), tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_cli_names_weights_that_do_not_fit(small_encoder, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDURWKV_DEBUG", raising=False)
    net_def = dict(_target_="medurwkv_net.MedURWKV", in_channels=1, out_channels=3, img_size=64, **SMALL)
    config = {"network_def": net_def}
    (tmp_path / "inference.json").write_text(json.dumps(config))
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "model.pt")
    args = ["export-onnx", "--filepath", str(tmp_path / "m.onnx"), "--config_file", str(tmp_path / "inference.json"),
            "--ckpt_file", str(tmp_path / "model.pt")]
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err
    assert "model.pt do not fit 'network_def'" in err and "--key_in_ckpt" in err
    with pytest.raises(SystemExit):
        main(args + ["--key_in_ckpt", "optimizer"])
    assert "model.pt has no key 'optimizer' (it holds ['model'])" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
