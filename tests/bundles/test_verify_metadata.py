"""``verify_metadata`` offline: the MONAI metadata schema the bundles reference ships with the package."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medurwkv_net.bundle.metadata import metadata_schema_path, verify_metadata

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt by MONAI fails the test."""
    import monai.apps.utils as monai_apps_utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(monai_apps_utils, "urlretrieve", refuse)
    monkeypatch.setattr(monai_apps_utils, "urlopen", refuse)


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_every_bundle_metadata_verifies_offline(bundle, no_network):
    used = verify_metadata(bundle / "configs" / "metadata.json")
    assert used == metadata_schema_path(json.loads((bundle / "configs" / "metadata.json").read_text())["schema"])


def test_monai_command_with_the_shipped_schema_runs_offline():
    bundle = REPO / "bundles" / "medurwkv_mni152_tissue"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "no_proxy": "", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}  # a download would fail
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
                           "configs/metadata.json", "--filepath", metadata_schema_path()],
                          cwd=bundle, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "skipped downloading" in out and "verified with no error" in out


def test_bad_metadata_is_refused_naming_the_problem(tmp_path, no_network):
    meta = json.loads((REPO / "bundles" / "medurwkv_mni152_tissue" / "configs" / "metadata.json").read_text())
    del meta["authors"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'authors' is a required property"):
        verify_metadata(bad)
    meta["schema"] = "https://example.org/schemas/meta_schema_29990101.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="no shipped metadata schema named 'meta_schema_29990101.json'"):
        verify_metadata(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        verify_metadata(tmp_path / "missing.json")
