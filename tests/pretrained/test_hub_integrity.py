"""Weight files served by a Hub stand-in on 127.0.0.1 (``HF_ENDPOINT``) as files stored in git itself (not
Git LFS): their ETag is the git blob SHA-1, which is checked after every download."""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest
import torch

from medurwkv_net import VRWKV, load_vrwkv_weights
from medurwkv_net.pretrained import git_blob_sha1, verify_hub_file
from medurwkv_net.reliability import WeightsIntegrityError

REPO = "testowner/plain-git-weights"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    files: dict  # name -> (published bytes, served bytes)

    def log_message(self, *args):
        pass

    def _route(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        prefix = f"/{REPO}/resolve/"
        name = path[len(prefix):].partition("/")[2] if path.startswith(prefix) else ""
        if name not in self.files:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        published, served = self.files[name]
        self.send_response(200)
        # a file in git: ETag = git blob SHA-1 of what the commit holds, no X-Linked-Etag (that is for LFS)
        self.send_header("ETag", f'"{_git_sha1(published)}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(served)))
        self.end_headers()
        if not head:
            self.wfile.write(served)

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)


@pytest.fixture
def plain_git_hub(tmp_path, monkeypatch, reference_dir):
    """Serves the mini checkpoint twice: intact as ``good.pth``, one byte changed as ``tampered.pth``."""
    import huggingface_hub.constants as hf_constants

    data = (reference_dir / "vrwkv_mini_ckpt.pth").read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    handler = type("Handler", (_Handler,), {"files": {"good.pth": (data, data), "tampered.pth": (data, bytes(bad))}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    yield data
    server.shutdown()


def _model(reference_dir) -> VRWKV:
    io = torch.load(reference_dir / "vrwkv_mini_io.pt", weights_only=True)
    return VRWKV(**io["config"])


def test_intact_plain_git_file_is_accepted(plain_git_hub, reference_dir):
    model = _model(reference_dir)
    report = load_vrwkv_weights(model, f"hf://{REPO}/good.pth")
    assert git_blob_sha1(report.source) == _git_sha1(plain_git_hub)
    assert verify_hub_file(report.source, REPO, "good.pth") == "git-sha1"
    ref = _model(reference_dir)
    load_vrwkv_weights(ref, reference_dir / "vrwkv_mini_ckpt.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_tampered_plain_git_file_is_refused(plain_git_hub, reference_dir):
    model = _model(reference_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    published = _git_sha1(plain_git_hub)
    with pytest.raises(WeightsIntegrityError) as err:
        load_vrwkv_weights(model, f"hf://{REPO}/tampered.pth")
    msg = str(err.value)
    for part in (f"'tampered.pth' of repo '{REPO}'", f"git blob SHA-1 {published}", "was not loaded",
                 "download it again"):
        assert part in msg, msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_git_blob_sha1_is_gits_object_id(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello\n")
    assert git_blob_sha1(f) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"
