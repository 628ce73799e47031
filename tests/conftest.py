"""Shared pytest fixtures.

``reference_dir``: the Vision-RWKV reference vectors (shared/vrwkv_reference). Resolved from the
``MEDURWKV_REFERENCE_DIR`` environment variable, else ``<repo>/../shared/vrwkv_reference`` (CI clones the
repository with ``shared/`` beside it). A missing directory is a test error, not a skip.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_dir() -> Path:
    env = os.environ.get("MEDURWKV_REFERENCE_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "vrwkv_reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = _reference_dir()
    if not (path / "vrwkv_t_ckpt.pth").is_file():
        pytest.fail(
            f"Vision-RWKV reference vectors not found in {path}; set MEDURWKV_REFERENCE_DIR or place shared/ "
            "beside the repository."
        )
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def hf_offline_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in offline mode; returns ``fill(repo_id, {filename: src}, commit)``.

    ``fill`` lays files out as the Hub client does (``models--owner--name/{blobs,snapshots,refs}``), so
    ``huggingface_hub.hf_hub_download`` serves them from the cache without any network access.
    """
    import hashlib
    import shutil

    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))

    def fill(repo_id: str, files: dict, commit: str = "0123456789abcdef0123456789abcdef01234567", ref: str = "main"):
        root = cache / ("models--" + repo_id.replace("/", "--"))
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
        for name, src in files.items():
            data = Path(src).read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            dst = root / "snapshots" / commit / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:  # the client links snapshots to blobs; it copies where links are not allowed
                dst.symlink_to(os.path.relpath(blob, dst.parent))
            except OSError:
                shutil.copyfile(blob, dst)
        return cache

    return fill
