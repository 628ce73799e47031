"""Shared pytest fixtures.

``reference_dir``: the Vision-RWKV reference vectors in the repository (``tests/fixtures/vrwkv_reference``:
the two small checkpoints with the official backbone's inputs and outputs, and VRWKV-T's key list).
``full_reference_dir``: the VRWKV-T set (34 MB, not in the repository) from ``$MEDURWKV_REFERENCE_DIR``;
tests that need it are skipped, with that reason in the summary, when the variable is unset.
``vrwkv_t_checkpoint``: a checkpoint in the released VRWKV-T format (every key and shape of the official
file, random values), for tests of loading paths that need the real layout but not its values.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_ENV = "MEDURWKV_REFERENCE_DIR"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return FIXTURES / "vrwkv_reference"


@pytest.fixture(scope="session")
def full_reference_dir() -> Path:
    env = os.environ.get(REFERENCE_ENV)
    if not env:
        pytest.skip(f"VRWKV-T reference vectors (34 MB) are not in the repository; set {REFERENCE_ENV} to a folder "
                    "holding vrwkv_t_ckpt.pth and vrwkv_t_io.pt to run this test")
    path = Path(env)
    missing = [n for n in ("vrwkv_t_ckpt.pth", "vrwkv_t_io.pt") if not (path / n).is_file()]
    if missing:
        pytest.fail(f"{REFERENCE_ENV}={env} lacks {', '.join(missing)}")
    return path


@pytest.fixture(scope="session")
def vrwkv_t_checkpoint(tmp_path_factory) -> Path:
    """``vrwkv_t_ckpt.pth``: ``{'meta', 'state_dict'}`` with the official VRWKV-T keys and shapes, random values."""
    keys = json.loads((FIXTURES / "vrwkv_reference" / "vrwkv_t_keys.json").read_text())
    gen = torch.Generator().manual_seed(1234)
    state = {}
    for key, shape in keys:
        x = torch.randn(shape, generator=gen)
        if key.endswith(("ln0.weight", "ln1.weight", "ln2.weight")):
            x = 1.0 + 0.1 * x
        elif "spatial_mix" in key or "channel_mix" in key:
            x = torch.rand(shape, generator=gen)
        elif not key.endswith(("spatial_decay", "spatial_first")):
            x = 0.02 * x
        state[key] = x
    path = tmp_path_factory.mktemp("vrwkv_t") / "vrwkv_t_ckpt.pth"
    torch.save({"meta": {"note": "random weights in the released VRWKV-T layout"}, "state_dict": state}, path)
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



@pytest.fixture
def git_lfs(tmp_path, monkeypatch):
    """``git lfs`` for ``hub-prepare``: the installed one, else a stand-in on PATH that answers ``git lfs version``
    and ``git lfs install --local`` and records its calls (git then stores the files without the LFS filter).
    Returns a function giving the recorded calls, or None with a real Git LFS."""
    import subprocess
    import sys

    if subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0:
        return None
    bindir = tmp_path / "lfs_bin"
    bindir.mkdir()
    log = tmp_path / "lfs_calls.txt"
    stub = bindir / "git-lfs"
    stub.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:2] == ['version']:\n    print('git-lfs/stand-in')\n"
    )
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return lambda: log.read_text().splitlines() if log.exists() else []
