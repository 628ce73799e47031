"""Hub release of the demo bundle: ``hub-prepare``, then ``monai.bundle.download(source="huggingface_hub")``
through huggingface_hub's real download code against a small Hub-like HTTP server on 127.0.0.1
(``HF_ENDPOINT``), then ``monai.bundle run`` on the downloaded bundle."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from medurwkv_net.hub import prepare_bundle_repo

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "medurwkv_mni152_tissue"
REPO_ID = "medurwkv/mni152_tissue"
VERSION = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]


class _HubHandler(BaseHTTPRequestHandler):
    """Serves one git-tagged folder the way the Hub API does (the parts snapshot_download uses)."""

    root: Path
    repo_id: str
    refs: dict  # revision (tag, branch or sha) -> commit sha
    requests: list

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                      if p.is_file() and ".git" not in p.relative_to(self.root).parts)

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, code=200):
        self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _route(self, head: bool):
        path = unquote(urlparse(self.path).path)
        self.requests.append(f"{self.command} {path}")
        api = f"/api/models/{self.repo_id}/"
        if path.startswith(api + "revision/"):
            sha = self.refs.get(path[len(api + "revision/"):])
            if sha is None:
                return self._send(404, b"{}",
                                  {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "no such revision"})
            return self._json({"id": self.repo_id, "modelId": self.repo_id, "sha": sha, "private": False,
                               "siblings": [{"rfilename": f} for f in self._files()]})
        if path.startswith(api + "tree/"):
            entries = []
            for f in self._files():
                data = (self.root / f).read_bytes()
                entries.append({"type": "file", "path": f, "size": len(data),
                                "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()})
            return self._json(entries)
        prefix = f"/{self.repo_id}/resolve/"
        if path.startswith(prefix):
            revision, _, name = path[len(prefix):].partition("/")
            sha = self.refs.get(revision)
            target = self.root / name
            if sha is None or not target.is_file():
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            data = target.read_bytes()
            return self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                          "Content-Type": "application/octet-stream"}, head)
        return self._send(404, b"", {}, head)

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)


@pytest.fixture
def hub_server(tmp_path, monkeypatch, git_lfs):
    """Prepare the demo bundle (with a model) as a Hub repo and serve it; yields (endpoint, handler class)."""
    src = tmp_path / "src_bundle"
    shutil.copytree(BUNDLE, src, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    (src / "models").mkdir()
    import medurwkv_net

    net = medurwkv_net.MedURWKV(spatial_dims=2, in_channels=1, out_channels=3, img_size=224)
    torch.save(net.state_dict(), src / "models" / "model.pt")
    (src / "models" / "checkpoints").mkdir()
    (src / "models" / "checkpoints" / "checkpoint_1.pt").write_bytes(b"not for the Hub")
    repo = Path(prepare_bundle_repo(str(src), str(tmp_path / "hub_repo"), repo_id=REPO_ID))
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    handler = type("Handler", (_HubHandler,), {"root": repo, "repo_id": REPO_ID, "requests": [],
                                               "refs": {VERSION: sha, "main": sha, sha: sha}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    yield repo, handler
    server.shutdown()


def test_prepare_bundle_repo_layout(hub_server):
    repo, _ = hub_server
    card = (repo / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: monai\n")
    assert f'version: "{VERSION}"' in card and '- "grey_matter"' in card
    assert (repo / "configs" / "train.json").is_file() and (repo / "LICENSE").is_file()
    assert sorted(p.name for p in (repo / "models").iterdir()) == ["model.pt"]  # no resumable checkpoints
    tags = subprocess.run(["git", "-C", str(repo), "tag"], capture_output=True, text=True, check=True).stdout.split()
    assert tags == [VERSION]


def test_prepare_bundle_repo_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="differs from"):
        prepare_bundle_repo(str(BUNDLE), str(tmp_path / "a"), repo_id=REPO_ID, version="9.9.9")
    with pytest.raises(ValueError, match="owner/name"):
        prepare_bundle_repo(str(BUNDLE), str(tmp_path / "b"), repo_id="no-owner")
    with pytest.raises(FileNotFoundError, match="not a bundle folder"):
        prepare_bundle_repo(str(tmp_path), str(tmp_path / "c"), repo_id=REPO_ID)


def test_download_from_hub_then_run_inference(hub_server, tmp_path):
    from monai.bundle import download

    repo, handler = hub_server
    dest = tmp_path / "downloaded"
    download(name="medurwkv_mni152_tissue", source="huggingface_hub", repo=REPO_ID, version=VERSION,
             bundle_dir=str(dest))
    bundle = dest / "medurwkv_mni152_tissue"
    assert any(r.startswith(f"GET /api/models/medurwkv/mni152_tissue/revision/{VERSION}") for r in handler.requests)
    assert (bundle / "configs" / "inference.json").read_bytes() == (repo / "configs" / "inference.json").read_bytes()
    assert (bundle / "models" / "model.pt").read_bytes() == (repo / "models" / "model.pt").read_bytes()
    # a revision the Hub does not have is an error, not a silent fallback
    with pytest.raises(Exception, match="(?i)revision"):
        download(name="other", source="huggingface_hub", repo=REPO_ID, version="7.7.7", bundle_dir=str(dest))

    # run the downloaded bundle: inference on one demo slice
    from medurwkv_net.data import mni152

    data = tmp_path / "data"
    datalist = json.loads(Path(mni152.prepare(data)).read_text())
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data / datalist["test"][0]["image"], inputs)
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--input_dir", str(inputs), "--output_dir", str(tmp_path / "out"), "--inferer#overlap", "0.0"],
        cwd=bundle, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [
        Path(datalist["test"][0]["image"]).name.replace(".nii.gz", "_seg.nii.gz")
    ]
