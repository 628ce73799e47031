"""Released weights that cannot be fetched (offline, Hub unreachable) give one message: the repository, the file,
the cache folder searched and the ways on; in a ``monai.bundle`` run, that message and no traceback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from medurwkv_net import create_medurwkv
from medurwkv_net.reliability.errors import PretrainedUnavailableError


def _check_message(msg: str, cache) -> None:
    assert "'vrwkv_t_in1k_224.pth'" in msg and "'OpenGVLab/Vision-RWKV'" in msg, msg
    assert str(cache) in msg, msg
    assert "--pretrained /path/to/vrwkv_t_in1k_224.pth" in msg and "--pretrained False" in msg, msg
    assert "hf_hub_download('OpenGVLab/Vision-RWKV', 'vrwkv_t_in1k_224.pth')" in msg, msg


def test_offline_with_an_empty_cache_names_repo_file_cache_and_the_ways_on(hf_offline_cache, tmp_path):
    with pytest.raises(PretrainedUnavailableError) as err:
        create_medurwkv(spatial_dims=2, in_channels=1, out_channels=2, img_size=64, pretrained=True)
    msg = str(err.value)
    _check_message(msg, tmp_path / "hf_cache")
    assert "HF_HUB_OFFLINE" in msg
    assert isinstance(err.value, FileNotFoundError)  # callers that caught FileNotFoundError still do


def test_unreachable_hub_is_told_apart_from_offline_mode(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        f"http://127.0.0.1:{port}/{{repo_id}}/resolve/{{revision}}/{{filename}}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(PretrainedUnavailableError) as err:
        create_medurwkv(spatial_dims=2, in_channels=1, out_channels=2, img_size=64, pretrained=True)
    msg = str(err.value)
    _check_message(msg, cache)
    assert "cannot be reached" in msg and "HF_HUB_OFFLINE" not in msg


def test_monai_bundle_run_prints_one_message_without_traceback(tmp_path):
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    config = {
        "network_def": {"_target_": "medurwkv_net.create_medurwkv", "spatial_dims": 2, "in_channels": 1,
                        "out_channels": 2, "img_size": 64, "pretrained": True},
        "run": ["$print(sum(p.numel() for p in @network_def.parameters()))"],
    }
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    env.pop("MEDURWKV_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    _check_message(lines[0], cache)
