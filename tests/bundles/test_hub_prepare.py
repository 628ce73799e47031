"""``hub-prepare``: weight files in Git LFS (or a clear refusal without ``git lfs``), and a model card whose
relative links resolve inside the prepared repository."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medurwkv_net.hub import LFS_PATTERNS, prepare_bundle_repo

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "medurwkv_mni152_tissue"
REPO_ID = "medurwkv/mni152_tissue"


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of the demo bundle in a project-like tree, with model files and a card linking outside the bundle."""
    project = tmp_path / "project"
    (project / "docs").mkdir(parents=True)
    (project / "docs" / "DESIGN.md").write_text("# design\n")
    src = project / "bundles" / "demo"
    shutil.copytree(BUNDLE, src, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    (src / "models").mkdir()
    for name in ("model.pt", "model.ts", "model.onnx"):
        (src / "models" / name).write_bytes(os.urandom(2048))
    (src / "NOTICE.md").write_text("notice\n")
    card = src / "docs" / "README.md"
    card.write_text(card.read_text() + "\nSee [the design](../../../docs/DESIGN.md#blocks), [notice](../NOTICE.md), "
                    "[site](https://example.org/x.md) and [top](#outputs).\n\n[ref]: ../LICENSE\n")
    return src


def _links(card: str) -> list[str]:
    inline = re.findall(r"\]\(\s*([^)\s]+)", card)
    refs = re.findall(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)", card, re.MULTILINE)
    return [t for t in inline + refs if not re.match(r"^([a-z]+:|#)", t)]


def test_prepared_repo_stores_weights_with_lfs_and_card_links_resolve(bundle, tmp_path, git_lfs):
    out = Path(prepare_bundle_repo(str(bundle), str(tmp_path / "hub"), repo_id=REPO_ID))
    attributes = (out / ".gitattributes").read_text().splitlines()
    for pattern in ("*.pt", "*.ts", "*.onnx", "*.safetensors"):
        assert f"{pattern} filter=lfs diff=lfs merge=lfs -text" in attributes
    assert len(attributes) == len(LFS_PATTERNS)
    for name in ("model.pt", "model.ts", "model.onnx"):
        attr = subprocess.run(["git", "-C", str(out), "check-attr", "filter", f"models/{name}"],
                              capture_output=True, text=True, check=True).stdout
        assert attr.strip().endswith("filter: lfs"), attr
    if git_lfs is None:  # a real Git LFS: the committed files are LFS pointers
        listed = subprocess.run(["git", "-C", str(out), "lfs", "ls-files", "--name-only"], capture_output=True,
                                text=True, check=True).stdout.split()
        assert sorted(listed) == ["models/model.onnx", "models/model.pt", "models/model.ts"]
    else:
        assert "install --local" in git_lfs()

    card = (out / "README.md").read_text()
    links = _links(card)
    assert "LICENSE" in links and "docs/data_license.txt" in links and "NOTICE.md" in links
    assert "docs/linked/DESIGN.md#blocks" in links
    for target in links:
        assert (out / target.split("#")[0]).is_file(), target
    assert "../" not in "".join(links)
    assert "(https://example.org/x.md)" in card and "(#outputs)" in card
    # every linked file is committed
    tracked = subprocess.run(["git", "-C", str(out), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert {"NOTICE.md", "docs/linked/DESIGN.md", "docs/data_license.txt", "LICENSE"} <= set(tracked)


def test_without_git_lfs_hub_prepare_refuses_and_writes_nothing(bundle, tmp_path, monkeypatch):
    # a PATH with git but without git-lfs
    bindir = tmp_path / "git_only"
    bindir.mkdir()
    (bindir / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bindir))
    out = tmp_path / "hub"
    with pytest.raises(RuntimeError, match=r"`git lfs` is not available.*install Git LFS.*--git False"):
        prepare_bundle_repo(str(bundle), str(out), repo_id=REPO_ID)
    assert not out.exists()
    # without a git repository no Git LFS is needed (huggingface_hub uploads large files itself)
    prepare_bundle_repo(str(bundle), str(out), repo_id=REPO_ID, git=False)
    assert (out / "models" / "model.pt").is_file() and not (out / ".git").exists()


def test_card_link_to_a_missing_file_is_refused(bundle, tmp_path, git_lfs):
    card = bundle / "docs" / "README.md"
    card.write_text(card.read_text() + "\n[gone](figures/missing.png)\n")
    with pytest.raises(FileNotFoundError, match=r"link 'figures/missing.png' points to .*missing.png"):
        prepare_bundle_repo(str(bundle), str(tmp_path / "hub"), repo_id=REPO_ID)
