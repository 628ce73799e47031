"""``python -m monai.bundle ckpt_export`` scripts the bundles' networks (no tracing): the exported model runs
at any input size and matches the eager network. The bundle folders are only read."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

sys.path.insert(0, str(Path(__file__).parent))
from test_demo_bundle import bundle_run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bundle, sizes", [
    ("medurwkv_mni152_tissue", [(1, 1, 224, 224), (2, 1, 150, 197)]),
    ("medurwkv_mni152_tissue_3d", [(1, 1, 32, 32, 32), (1, 1, 40, 36, 20)]),
    ("medurwkv_kvasir", [(1, 3, 256, 256), (1, 3, 96, 120)]),
])
def test_ckpt_export_scripts_a_model_that_runs_at_any_size(tmp_path, bundle, sizes):
    folder = REPO / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    assert parser["network_def"]["pretrained"] is False  # inference needs no ImageNet weights
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts = tmp_path / "model.ts"
    bundle_run(folder, "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(ckpt),
               "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json")  # as the cards say
    scripted = torch.jit.load(str(ts))
    for shape in sizes:
        x = torch.randn(shape)
        with torch.no_grad():
            out, ref = scripted(x), net(x)
        assert out.shape == ref.shape == (shape[0], net.out_channels, *shape[2:])
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
