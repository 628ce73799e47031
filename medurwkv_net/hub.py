"""Prepare a bundle folder as a Hugging Face Hub model repository.

``python -m medurwkv_net hub-prepare bundles/medurwkv_mni152_tissue OUT --repo_id owner/name [--version 0.1.0]``

The repository root is the bundle root (what ``monai.bundle.download(source="huggingface_hub",
repo="owner/name", version=...)`` expects): ``LICENSE``, ``configs/``, ``docs/``, ``models/`` (the
trained ``model.pt`` / ``model.ts`` only, never resumable checkpoints), plus ``README.md`` = the model
card ``docs/README.md`` with Hub front matter (licence, library, tags, version), and a
``.gitattributes`` that stores weight files (``*.pt``, ``*.ts``, ``*.onnx``, ``*.safetensors``, ...) with
Git LFS. The card's relative links (written relative to ``docs/``) are rewritten relative to the
repository root; a linked file of the bundle that is not part of the copy, or one outside the bundle
(e.g. ``../../docs/DESIGN.md``), is copied in (the latter under ``docs/linked/``), so every link
resolves inside the repository. A link to a missing file is an error.

The output folder is made a git repository with one commit tagged with the bundle version (Hub
versions are git tags), so it can be pushed with ``git push --tags``; this needs Git LFS (the Hub
refuses large files outside LFS): without ``git lfs`` it refuses before writing anything. Or pass
``git=False, push=True`` to upload the folder with MONAI's own ``monai.bundle.push_to_hf_hub`` (no git
needed), which creates the same tag.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

__all__ = ["prepare_bundle_repo", "front_matter", "LFS_PATTERNS", "rewrite_card_links", "git_lfs_available"]

_COPY = ("LICENSE", "configs", "docs")
_MODEL_FILES = ("model.pt", "model.ts", "model.onnx", "model.safetensors")
#: files stored with Git LFS in the prepared repository
LFS_PATTERNS = ("*.pt", "*.pth", "*.ts", "*.onnx", "*.safetensors", "*.bin", "*.ckpt", "*.nii.gz", "*.npz")
LFS_INSTALL_HINT = (
    "install Git LFS (https://git-lfs.com; e.g. `apt-get install git-lfs`, `brew install git-lfs` or "
    "`conda install -c conda-forge git-lfs`), run `git lfs install` once, then run hub-prepare again; "
    "or pass --git False (and --push True) to upload the folder with huggingface_hub, which needs no git"
)
# [text](target) / ![alt](target "title") and reference definitions [id]: target
_INLINE_LINK = re.compile(r"(\]\(\s*)(<[^>]+>|[^)\s]+)")
_REF_LINK = re.compile(r"^(\s{0,3}\[[^\]]+\]:\s*)(\S+)", re.MULTILINE)
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


def git_lfs_available() -> bool:
    """Whether ``git lfs`` runs on this machine."""
    try:
        return subprocess.run(["git", "lfs", "version"], capture_output=True, text=True).returncode == 0
    except OSError:
        return False


def _is_relative_link(target: str) -> bool:
    if not target or target.startswith(("#", "/")):
        return False
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) is None  # no scheme (http:, mailto:, ...)


def rewrite_card_links(card: str, card_dir: Path, bundle: Path, copied: List[str]) -> Tuple[str, Dict[str, Path]]:
    """Rewrite the relative links of a model card written in ``card_dir`` to be relative to the repository root.

    Args:
        card: the card's markdown.
        card_dir: the folder the card's links are relative to (the bundle's ``docs``).
        bundle: the bundle root (= the repository root).
        copied: top-level names of the bundle that are copied into the repository.

    Returns:
        ``(new_card, extra)``: ``extra`` maps repository paths to the files to copy in so that every link
        resolves (linked files of the bundle outside ``copied``, files outside the bundle).

    Raises:
        FileNotFoundError: a link points to a file that does not exist (naming the card line's link).
    """
    extra: Dict[str, Path] = {}

    def fix(target: str) -> str:
        bare = target[1:-1] if target.startswith("<") and target.endswith(">") else target
        if not _is_relative_link(bare):
            return target
        path_part, hash_, anchor = bare.partition("#")
        path_part, q, query = path_part.partition("?")
        src = (card_dir / path_part).resolve()
        if not src.exists():
            raise FileNotFoundError(
                f"model card {card_dir / 'README.md'}: link '{target}' points to {src}, which does not exist; "
                "fix the link or add the file to the bundle"
            )
        try:
            rel = src.relative_to(bundle).as_posix()
            if rel.split("/")[0] not in copied:
                extra[rel] = src
        except ValueError:  # outside the bundle: copied under docs/linked/
            rel = f"docs/linked/{src.name}"
            n = 1
            while rel in extra and extra[rel] != src:
                n += 1
                rel = f"docs/linked/{n}_{src.name}"
            extra[rel] = src
        new = rel + (q + query if q else "") + (hash_ + anchor if hash_ else "")
        return f"<{new}>" if target.startswith("<") else new

    card = _INLINE_LINK.sub(lambda m: m.group(1) + fix(m.group(2)), card)
    card = _REF_LINK.sub(lambda m: m.group(1) + fix(m.group(2)), card)
    return card, extra


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
        git: make ``out_dir`` a git repository with one commit tagged ``version``, weight files in Git LFS
            (needs ``git lfs``: refused with instructions when it is missing).
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
    if git and not git_lfs_available():
        raise RuntimeError(
            f"hub-prepare: `git lfs` is not available, and the Hub stores model files only with "
            f"Git LFS; {LFS_INSTALL_HINT}."
        )
    card, extra = rewrite_card_links(
        (bundle / "docs" / "README.md").read_text(), bundle / "docs", bundle, [*_COPY, "models"]
    )

    out.mkdir(parents=True, exist_ok=True)
    for name in _COPY:
        src = bundle / name
        if src.is_dir():
            shutil.copytree(
                src, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "monailabel_train.json")
            )
        else:
            shutil.copy2(src, out / name)
    models = [bundle / "models" / f for f in _MODEL_FILES if (bundle / "models" / f).is_file()]
    if models:
        (out / "models").mkdir()
        for f in models:
            shutil.copy2(f, out / "models" / f.name)
    for rel, src in extra.items():
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    (out / "README.md").write_text(front_matter(metadata, repo_id, version) + card)
    (out / ".gitattributes").write_text("".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS))
    if git:
        _git(out, "init", "-q")
        _git(out, "lfs", "install", "--local")
        _git(out, "add", "-A")
        _git(
            out,
            "-c",
            "user.name=medurwkv-net",
            "-c",
            "user.email=medurwkv-net@localhost",
            "commit",
            "-q",
            "-m",
            f"{repo_id} {version}",
        )
        _git(out, "tag", version)
    if push:
        from monai.bundle import push_to_hf_hub

        push_to_hf_hub(
            repo=repo_id,
            name=out.name,
            bundle_dir=str(out.parent),
            token=token,
            private=private,
            version=version,
            tag_as_latest_version=True,
        )
    return str(out)
