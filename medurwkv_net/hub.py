"""Prepare a bundle folder as a Hugging Face Hub model repository.

``python -m medurwkv_net hub-prepare bundles/medurwkv_mni152_tissue OUT --repo_id owner/name [--version 0.1.0]``

The repository root is the bundle root (what ``monai.bundle.download(source="huggingface_hub",
repo="owner/name", version=...)`` expects): ``LICENSE``, ``configs/``, ``docs/``, ``models/`` (the
trained ``model.pt`` / ``model.ts`` only, never resumable checkpoints), plus ``README.md`` = the model
card ``docs/README.md`` with Hub front matter (licence, library, tags, version), and a
``.gitattributes`` that stores ``*.pt``/``*.ts`` with Git LFS.

The output folder is made a git repository with one commit tagged with the bundle version (Hub
versions are git tags), so it can be pushed with ``git push --tags``; or pass ``push=True`` to upload
it with MONAI's own ``monai.bundle.push_to_hf_hub``, which creates the same tag.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["prepare_bundle_repo", "front_matter"]

_COPY = ("LICENSE", "configs", "docs")
_MODEL_FILES = ("model.pt", "model.ts")
_VERSION = re.compile(r"^\d+\.\d+\.\d+([.-][0-9A-Za-z.]+)?$")


def front_matter(metadata: dict, repo_id: str, version: str) -> str:
    """YAML front matter of the Hub model card, from the bundle's metadata.json."""
    classes = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: monai",
        "pipeline_tag: image-segmentation",
        "tags:",
        "- monai",
        "- medical-imaging",
        "- segmentation",
        "- rwkv",
        "- med-urwkv",
        f"model_name: {json.dumps(metadata.get('name', repo_id.split('/')[-1]))}",
        f"version: {json.dumps(version)}",
    ]
    if classes:
        lines.append("classes:")
        lines += [f"- {json.dumps(name)}" for _, name in sorted(classes.items(), key=lambda kv: int(kv[0]))]
    lines.append("---")
    return "\n".join(lines) + "\n\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def prepare_bundle_repo(
    bundle_dir: str,
    out_dir: str,
    repo_id: str,
    version: str | None = None,
    git: bool = True,
    push: bool = False,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Write ``out_dir`` as the Hub repository of the bundle in ``bundle_dir``; return ``out_dir``.

    Args:
        bundle_dir: a bundle folder (holding ``configs/metadata.json``).
        out_dir: new or empty folder to write.
        repo_id: ``owner/name`` on the Hub.
        version: defaults to metadata.json's ``version``; when given it must equal it (the tag is the
            version the bundle declares, with an entry in its ``changelog``).
        git: make ``out_dir`` a git repository with one commit tagged ``version``.
        push: upload with ``monai.bundle.push_to_hf_hub`` (needs network and a token) and tag it.
    """
    bundle = Path(bundle_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{bundle} is not a bundle folder: {meta_file} is missing")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", repo_id or ""):
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    metadata = json.loads(meta_file.read_text())
    declared = str(metadata.get("version", ""))
    version = declared if version is None else str(version)
    if version != declared:
        raise ValueError(f"version {version!r} differs from {meta_file} version {declared!r}; bump the metadata first")
    if not _VERSION.match(version):
        raise ValueError(f"{meta_file}: version {version!r} is not of the form MAJOR.MINOR.PATCH")
    if version not in metadata.get("changelog", {}):
        raise ValueError(f"{meta_file}: changelog has no entry for version {version!r}")
    missing = [name for name in (*_COPY, "docs/README.md") if not (bundle / name).exists()]
    if missing:
        raise FileNotFoundError(f"bundle {bundle} lacks {missing}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"out_dir {out} exists and is not empty")

    out.mkdir(parents=True, exist_ok=True)
    for name in _COPY:
        src = bundle / name
        if src.is_dir():
            shutil.copytree(src, out / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "monailabel_train.json"))
        else:
            shutil.copy2(src, out / name)
    models = [bundle / "models" / f for f in _MODEL_FILES if (bundle / "models" / f).is_file()]
    if models:
        (out / "models").mkdir()
        for f in models:
            shutil.copy2(f, out / "models" / f.name)
    card = (bundle / "docs" / "README.md").read_text()
    (out / "README.md").write_text(front_matter(metadata, repo_id, version) + card)
    (out / ".gitattributes").write_text(
        "*.pt filter=lfs diff=lfs merge=lfs -text\n*.ts filter=lfs diff=lfs merge=lfs -text\n"
    )
    if git:
        _git(out, "init", "-q")
        _git(out, "add", "-A")
        _git(out, "-c", "user.name=medurwkv-net", "-c", "user.email=medurwkv-net@localhost",
             "commit", "-q", "-m", f"{repo_id} {version}")
        _git(out, "tag", version)
    if push:
        from monai.bundle import push_to_hf_hub

        push_to_hf_hub(repo=repo_id, name=out.name, bundle_dir=str(out.parent), token=token, private=private,
                       version=version, tag_as_latest_version=True)
    return str(out)
