"""Loading released Vision-RWKV weights: source resolution, checkpoint filtering, conversion.

Sources accepted by :func:`load_vrwkv_weights` / :func:`convert_weights`:

- a local ``.pth`` / ``.pt`` / ``.bin`` file (read with ``torch.load(weights_only=True)``) or ``.safetensors`` file;
- ``hf://owner/repo/path/in/repo.pth[@revision]`` (downloaded with ``huggingface_hub.hf_hub_download``, so the
  Hub cache, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_ENDPOINT`` are honoured);
- a name of the registry :mod:`medurwkv_net.pretrained.registry` (``vrwkv_t_in1k_224``, ... or an alias such
  as ``tiny``), resolved there to a file of a Hub repository.

Every file fetched from the Hub is checked before it is read: against the registry's pinned ``sha256``
when there is one, and always against the hash the Hub published for it (its ETag): the SHA-256 of a
Git LFS file, the git blob SHA-1 of a file stored in git itself (:func:`verify_hub_file`).

Input-channel rule (:func:`adapt_input_conv`): a 3-channel (RGB) patch embedding ``W`` is adapted to ``n != 3``
input channels by giving every input channel the kernel ``(W_R + W_G + W_B) / n``. For ``n == 1`` this is the
sum over RGB; for any ``n`` an image whose ``n`` channels all equal ``g`` gives exactly the features of the RGB
image ``(g, g, g)``. (Medical channels such as MRI sequences have no RGB correspondence, so no channel is
preferred.)
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..networks.blocks import resize_pos_embed
from .registry import PRETRAINED_CFGS, list_pretrained, resolve_name

__all__ = [
    "resolve_source",
    "load_checkpoint",
    "checkpoint_filter_fn",
    "adapt_input_conv",
    "load_vrwkv_weights",
    "convert_weights",
    "LoadReport",
    "hub_sha256",
    "git_blob_sha1",
    "verify_hub_file",
]


def hub_sha256(path: Union[str, os.PathLike]) -> Optional[str]:
    """The SHA-256 the Hub published for a file fetched into the ``huggingface_hub`` cache, or None.

    The cache keeps each file once as ``blobs/<etag>`` and links it from ``snapshots/<commit>/``. For
    files stored with Git LFS (weight files are) the ETag is the SHA-256 of the content, so the blob
    name is the hash to check the bytes against; None for files outside the cache or not in LFS.
    """
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name
    return None


def git_blob_sha1(path: Union[str, os.PathLike]) -> str:
    """The git blob id of a file: ``sha1(b"blob <size>\\0" + content)``, read in 1 MiB chunks.

    It is the ETag the Hub publishes for a file stored in git itself (not in Git LFS).
    """
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_hub_file(path: Union[str, os.PathLike], repo_id: str, filename: str, revision: Optional[str] = None) -> str:
    """Check a file of the ``huggingface_hub`` cache against the hash the Hub published for it (its ETag).

    The cache stores each file as ``blobs/<etag>``: the SHA-256 of the content for a Git LFS file, the git
    blob SHA-1 (:func:`git_blob_sha1`) for a file stored in git itself. Both are checked here. Returns
    ``"sha256"``, ``"git-sha1"`` or ``"none"`` (a file outside the cache's blob store: nothing to check
    against).

    Raises:
        WeightsIntegrityError: the content does not have the published hash; the message names the repo,
            the file, both hashes and what to do.
    """
    from ..core.errors import WeightsIntegrityError
    from ..core.weights import file_sha256

    real = Path(os.path.realpath(path))
    if real.parent.name != "blobs":
        return "none"
    if re.fullmatch(r"[0-9a-f]{64}", real.name):
        kind, actual = "sha256", file_sha256(real)
    elif re.fullmatch(r"[0-9a-f]{40}", real.name):
        kind, actual = "git-sha1", git_blob_sha1(real)
    else:
        return "none"
    if actual != real.name:
        what = "SHA-256" if kind == "sha256" else "git blob SHA-1"
        raise WeightsIntegrityError(
            f"Hub file {filename!r} of repo {repo_id!r} (revision {revision or 'default'}) failed its integrity "
            f"check: the Hub published {what} {real.name} for it, the downloaded file ({real.stat().st_size} "
            f"bytes, {real}) has {actual}. It is truncated or was tampered with and was not loaded. Delete "
            f"{real} and download it again; if the check fails again, do not use this file: report it to the "
            "repository owner, or load a copy you trust and pin its sha256 (register_pretrained / sha256=...)."
        )
    return kind


def _parse_hf(source: str) -> Tuple[str, str, Optional[str]]:
    rest = source[len("hf://") :]
    revision: Optional[str] = None
    if "@" in rest:
        rest, _, revision = rest.rpartition("@")
        if not revision:
            raise ValueError(f"hf source {source!r}: empty revision after '@'.")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"hf source {source!r} must look like hf://owner/repo/path/to/file.pth[@revision].")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def _unavailable_message(
    repo_id: str, filename: str, revision: Optional[str], cache_dir: Optional[str], err: BaseException
) -> str:
    """Why a Hub file could not be had, where it was looked for, and the three ways on."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    cache = os.path.abspath(os.path.expanduser(str(cache_dir or constants.HF_HUB_CACHE)))
    at = f" at revision {revision!r}" if revision else ""
    if constants.HF_HUB_OFFLINE:
        why = f"the Hub is not contacted (HF_HUB_OFFLINE is set) and the file is not in the cache folder {cache}"
    elif isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        why = f"the Hub cannot be reached and the file is not in the cache folder {cache}"
    else:
        first = (str(err).strip().splitlines() or [""])[0]
        why = f"{type(err).__name__}: {first}"
    rev = f", revision={revision!r}" if revision else ""
    return (
        f"cannot get the pretrained weights '{filename}' from the Hugging Face repository '{repo_id}'{at}: {why}. "
        f"To go on, either download the file once where the Hub is reachable, into the same cache (HF_HUB_CACHE): "
        f"python -c \"from huggingface_hub import hf_hub_download; hf_hub_download('{repo_id}', '{filename}'{rev})\"; "
        f"or use a local copy (.pth or .safetensors): `--pretrained /path/to/{filename}` for a bundle, "
        f"pretrained='/path/to/{filename}' in Python; or train without ImageNet weights: `--pretrained False`."
    )


def _hf_download(repo_id: str, filename: str, revision: Optional[str], cache_dir: Optional[str]) -> str:
    from huggingface_hub import hf_hub_download

    from ..core.errors import PretrainedUnavailableError

    try:
        path = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir)
    except Exception as e:  # huggingface_hub raises many types (offline, 404, connection errors)
        raise PretrainedUnavailableError(_unavailable_message(repo_id, filename, revision, cache_dir, e)) from e
    # a file stored in git (not LFS) is named by its git blob SHA-1: check it here; an LFS file's SHA-256
    # is checked by the loader (load_checkpoint), together with a pinned hash
    if hub_sha256(path) is None:
        verify_hub_file(path, repo_id, filename, revision)
    return path


def resolve_source(source: Union[str, os.PathLike], cache_dir: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """Turn a weight source into a local file path; returns ``(path, expected_sha256_or_None)``.

    The expected hash of a registry entry is its pinned ``sha256``; otherwise, for anything fetched
    from the Hub, the SHA-256 the Hub published for the file (:func:`hub_sha256`).

    Raises:
        ValueError: malformed ``hf://`` source or unknown registry name.
        FileNotFoundError: local file missing (message names the file); a download that fails raises its
            subclass :class:`~medurwkv_net.reliability.errors.PretrainedUnavailableError` (repository, file,
            cache folder searched and what to do).
    """
    src = os.fspath(source)
    if src.startswith("hf://"):
        repo_id, filename, revision = _parse_hf(src)
        path = _hf_download(repo_id, filename, revision, cache_dir)
        return path, hub_sha256(path)
    name = resolve_name(src)
    if name is not None:
        cfg = PRETRAINED_CFGS[name]
        path = _hf_download(cfg.hf_hub_id, cfg.filename, cfg.revision, cache_dir)
        return path, cfg.sha256 or hub_sha256(path)
    p = Path(src).expanduser()
    if p.is_file():
        return str(p), None
    if p.suffix or os.sep in src or "/" in src:
        raise FileNotFoundError(f"Weight file {src!r} does not exist.")
    raise ValueError(
        f"Unknown weight source {src!r}: not a file, not hf://owner/repo/file, and not a registered name "
        f"(known: {list_pretrained()})."
    )


def load_checkpoint(path: Union[str, os.PathLike], sha256: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict (wrappers ``state_dict``/``model`` removed).

    Reading goes through :func:`medurwkv_net.reliability.safe_load_weights`: the SHA-256 check first when
    ``sha256`` is given, then safetensors or ``torch.load(weights_only=True)``; its errors name the file.
    """
    from ..core.weights import safe_load_weights

    return _unwrap(safe_load_weights(path, expected_sha256=sha256), os.fspath(path))


def _unwrap(obj: Any, where: str) -> Dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "module"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
        else:
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"Checkpoint {where} holds no state dict (expected a dict of tensors, optionally "
            f"wrapped in 'state_dict' or 'model'); got {type(obj).__name__}."
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"Checkpoint {where}: entries that are not tensors: {bad[:10]}.")
    return dict(obj)


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a patch-embedding weight ``[C, 3, *k]`` to ``in_channels`` (rule in the module docstring)."""
    src = weight.shape[1]
    if in_channels == src:
        return weight
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
    dtype = weight.dtype
    w = weight.float()
    out = w.sum(dim=1, keepdim=True).expand(-1, in_channels, *w.shape[2:]) / in_channels
    return out.contiguous().to(dtype)


def _strip(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        for prefix in ("module.",):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k.startswith("head.") or k.startswith("neck."):
            continue
        if k.startswith("backbone."):
            k = k[len("backbone.") :]
        out[k] = v
    return out


def _encoder_of(model: nn.Module) -> Any:
    enc = getattr(model, "encoder", None)
    return enc if isinstance(enc, nn.Module) and hasattr(enc, "pos_embed") else model


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """timm-style filter from a released checkpoint to a :class:`~medurwkv_net.VRWKV` state dict.

    Unwraps ``state_dict``/``model``, strips ``backbone.``, drops ``head.*``; with a ``model``, resizes
    ``pos_embed`` (bicubic, align_corners=False) to the model's grid and adapts the patch embedding to the
    model's ``in_channels``.
    """
    sd = _strip(_unwrap(state_dict, "state_dict"))
    if model is None:
        return sd
    enc = _encoder_of(model)
    pos = sd.get("pos_embed")
    if pos is not None and hasattr(enc, "pos_embed") and pos.ndim == 3:
        target = enc.pos_embed
        if pos.shape[1] != target.shape[1] and pos.shape[2] == target.shape[2]:
            n = int(round(math.sqrt(pos.shape[1])))
            if n * n != pos.shape[1]:
                raise ValueError(f"checkpoint pos_embed {tuple(pos.shape)} is not a square grid; cannot resize.")
            sd["pos_embed"] = resize_pos_embed(pos, [n, n], list(enc.pos_grid), "bicubic")
    key = "patch_embed.projection.weight"
    w = sd.get(key)
    if w is not None and hasattr(enc, "in_channels") and w.ndim >= 3 and w.shape[1] != enc.in_channels:
        sd[key] = adapt_input_conv(w, int(enc.in_channels))
    return sd


class LoadReport(NamedTuple):
    """Outcome of :func:`load_vrwkv_weights`."""

    source: str
    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]  # key, checkpoint shape, model shape


def _guess_variant(sd: Mapping[str, torch.Tensor]) -> str:
    pos = sd.get("pos_embed")
    if pos is None:
        return "unknown"
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    return f"embed_dims={pos.shape[-1]}, depth={depth}"


def load_vrwkv_weights(
    model: nn.Module,
    source: Union[str, os.PathLike],
    strict: bool = True,
    cache_dir: Optional[str] = None,
    sha256: Optional[str] = None,
) -> LoadReport:
    """Load Vision-RWKV weights into a :class:`~medurwkv_net.VRWKV` (or the ``.encoder`` of a MedURWKV).

    Args:
        model: a VRWKV, or a module with a VRWKV ``encoder`` attribute.
        source: local ``.pth``/``.safetensors`` path, ``hf://owner/repo/file[@revision]`` or a registry name
            (see module docstring).
        strict: raise if any key is missing, unexpected or mis-shaped. With ``strict=False`` the matching keys
            are loaded, the rest is reported in the returned value and in a warning.
        cache_dir: Hugging Face cache directory (default: the Hub's own, ``HF_HUB_CACHE``).
        sha256: expected SHA-256 of the file (overrides the registry's value).

    Returns:
        a :class:`LoadReport` with the resolved file and the missing / unexpected / mis-shaped keys.

    Raises:
        ValueError: unreadable checkpoint, SHA-256 mismatch, or (strict) any key problem; the message names the
            file, the keys and the shapes.
        FileNotFoundError: the file or download is not available.

    Examples::

        >>> enc = vrwkv_tiny(in_channels=1)
        >>> load_vrwkv_weights(enc, "hf://OpenGVLab/Vision-RWKV/vrwkv_t_in1k_224.pth")
    """
    path, known_sha = resolve_source(source, cache_dir=cache_dir)
    raw = load_checkpoint(path, sha256=sha256 or known_sha)
    target = _encoder_of(model)
    sd = checkpoint_filter_fn(raw, target)
    own = target.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in sd if k in own and sd[k].shape != own[k].shape]
    report = LoadReport(str(path), missing, unexpected, mismatched)
    problems = bool(missing or unexpected or mismatched)
    if problems:
        lines = [
            f"Checkpoint {path} (source {os.fspath(source)!r}) does not fit the model "
            f"(model: {_guess_variant(own)}; checkpoint: {_guess_variant(sd)})."
        ]
        if mismatched:
            lines.append(
                f"{len(mismatched)} mis-shaped keys (key: checkpoint shape vs model shape): "
                + "; ".join(f"{k}: {list(a)} vs {list(b)}" for k, a, b in mismatched[:12])
                + (" ..." if len(mismatched) > 12 else "")
            )
        if missing:
            lines.append(f"{len(missing)} missing keys: {missing[:12]}" + (" ..." if len(missing) > 12 else ""))
        if unexpected:
            lines.append(
                f"{len(unexpected)} unexpected keys: {unexpected[:12]}" + (" ..." if len(unexpected) > 12 else "")
            )
        msg = "\n".join(lines)
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    bad = {k for k, _, _ in mismatched}
    good = {k: v for k, v in sd.items() if k in own and k not in bad}
    with torch.no_grad():
        target.load_state_dict(good, strict=False)
    return report


def convert_weights(
    src: str, dst: str, in_channels: Optional[int] = None, overwrite: bool = False, cache_dir: Optional[str] = None
) -> str:
    """Write the backbone weights of a released checkpoint as a ``.safetensors`` file.

    ``python -m medurwkv_net convert-weights IN.pth OUT.safetensors [--in_channels 1]``. ``IN`` is any source
    accepted by :func:`load_vrwkv_weights`. The output holds the VRWKV state dict (``backbone.`` stripped,
    ``head.*`` dropped; the patch embedding adapted when ``in_channels`` is given) and loads with
    :func:`load_vrwkv_weights` or ``safetensors.torch.load_file``.

    Args:
        src: a local ``.pth``/``.safetensors`` file, ``hf://owner/repo/file[@rev]`` or a registry name.
        dst: the ``.safetensors`` file to write.
        in_channels: adapt the patch embedding to this many input channels.
        overwrite: replace an existing ``dst``.
        cache_dir: Hugging Face cache folder for downloads.

    Returns:
        the output path.
    """
    from safetensors.torch import save_file

    dst = os.fspath(dst)
    if not dst.endswith(".safetensors"):
        raise ValueError(f"convert-weights: output {dst!r} must end with .safetensors.")
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"convert-weights: {dst} exists; pass --overwrite to replace it.")
    path, known_sha = resolve_source(src, cache_dir=cache_dir)
    sd = _strip(load_checkpoint(path, sha256=known_sha))
    if "pos_embed" not in sd or "patch_embed.projection.weight" not in sd:
        raise ValueError(
            f"convert-weights: {path} is not a Vision-RWKV checkpoint (no pos_embed / "
            f"patch_embed.projection.weight among keys {sorted(sd)[:8]} ...)."
        )
    if in_channels is not None:
        sd["patch_embed.projection.weight"] = adapt_input_conv(sd["patch_embed.projection.weight"], int(in_channels))
    tensors = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dst, metadata={"source": os.fspath(src), "format": "pt", "converted_by": "medurwkv_net"})
    return dst
