"""The registry of released pretrained weights: the one place that names them.

Each entry (:class:`PretrainedCfg`) says where a checkpoint lives on the Hugging Face Hub (repository, file,
revision, SHA-256), which encoder variant it fills, and how its inputs were normalised in pre-training
(mean, std, input size), as timm keeps on its pretrained configs. Short names (``tiny``, ``small``, ``base``,
``vrwkv_t``, ...) resolve here and nowhere else; ``pretrained=True`` means the entry named after the encoder
variant (:func:`pretrained_name_for`). The bundles' ImageNet normalisation reads :data:`IMAGENET_MEAN` /
:data:`IMAGENET_STD` from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretrainedCfg",
    "PRETRAINED_CFGS",
    "ALIASES",
    "register_pretrained",
    "resolve_name",
    "get_pretrained_cfg",
    "pretrained_name_for",
    "list_pretrained",
]

#: ImageNet channel means and standard deviations (RGB, inputs scaled to [0, 1]) of the released encoders
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """A released checkpoint on the Hugging Face Hub and the facts needed to use it.

    Attributes:
        hf_hub_id: Hub repository ``owner/name``.
        filename: file path inside the repository.
        revision: branch, tag or (preferably) commit hash; None means the default branch.
        sha256: expected SHA-256 of the file, checked before it is read; None when not pinned (then the hash the
            Hub publishes for the file is checked).
        variant: encoder variant the weights belong to (``tiny``/``small``/``base``, keys of
            :data:`medurwkv_net.networks.vrwkv.VRWKV_VARIANTS`).
        architecture: free-text description.
        tags: free-form labels.
        mean: per-channel mean of the pre-training inputs (scaled to [0, 1]).
        std: per-channel standard deviation of the pre-training inputs.
        input_size: ``(channels, height, width)`` of the pre-training inputs.
    """

    hf_hub_id: str
    filename: str
    revision: Optional[str] = None
    sha256: Optional[str] = None
    variant: str = "tiny"
    architecture: str = ""
    tags: Tuple[str, ...] = ()
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    input_size: Tuple[int, ...] = (3, 224, 224)


# No commit hash or SHA-256 of the upstream files is pinned yet: fill ``revision`` and ``sha256`` once they
# have been read from the Hub (the file page shows the LFS SHA-256). Until then every download is checked
# against the hash the Hub publishes for it.
PRETRAINED_CFGS: Dict[str, PretrainedCfg] = {
    "vrwkv_t_in1k_224": PretrainedCfg(
        "OpenGVLab/Vision-RWKV", "vrwkv_t_in1k_224.pth", variant="tiny", architecture="VRWKV-T ImageNet-1K 224"
    ),
    "vrwkv_s_in1k_224": PretrainedCfg(
        "OpenGVLab/Vision-RWKV", "vrwkv_s_in1k_224.pth", variant="small", architecture="VRWKV-S ImageNet-1K 224"
    ),
    "vrwkv_b_in1k_224": PretrainedCfg(
        "OpenGVLab/Vision-RWKV", "vrwkv_b_in1k_224.pth", variant="base", architecture="VRWKV-B ImageNet-1K 224"
    ),
}

#: short names; the encoder variant names (``tiny``, ``small``, ``base``) are what ``pretrained=True`` loads
ALIASES: Dict[str, str] = {
    "tiny": "vrwkv_t_in1k_224",
    "small": "vrwkv_s_in1k_224",
    "base": "vrwkv_b_in1k_224",
    "vrwkv_t": "vrwkv_t_in1k_224",
    "vrwkv_s": "vrwkv_s_in1k_224",
    "vrwkv_b": "vrwkv_b_in1k_224",
}


def register_pretrained(name: str, cfg: PretrainedCfg, overwrite: bool = False) -> None:
    """Add a named checkpoint to the registry (e.g. a mirror, or a pinned revision).

    Args:
        name: the registry name (used as a weight source afterwards).
        cfg: where the file is and what it holds.
        overwrite: replace an existing entry of that name.

    Raises:
        ValueError: the name is taken (and ``overwrite`` is False) or is an alias.
    """
    if name in ALIASES:
        raise ValueError(f"pretrained name {name!r} is an alias of {ALIASES[name]!r}; choose another name.")
    if name in PRETRAINED_CFGS and not overwrite:
        raise ValueError(f"pretrained name {name!r} is already registered; pass overwrite=True to replace it.")
    PRETRAINED_CFGS[name] = cfg


def resolve_name(name: str) -> Optional[str]:
    """The registry name ``name`` stands for (itself or the target of an alias), or None if it is neither."""
    target = ALIASES.get(name, name)
    return target if target in PRETRAINED_CFGS else None


def list_pretrained() -> List[str]:
    """Registry names and aliases, sorted."""
    return sorted(PRETRAINED_CFGS) + sorted(ALIASES)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The registry entry of a name or alias.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    target = resolve_name(name)
    if target is None:
        raise ValueError(f"Unknown pretrained name {name!r}; known: {list_pretrained()}.")
    return PRETRAINED_CFGS[target]


def pretrained_name_for(variant: str) -> str:
    """The registry name of the released ImageNet weights of an encoder variant (what ``pretrained=True`` loads).

    Raises:
        ValueError: no released weights for ``variant``; the message says which variants have them.
    """
    target = resolve_name(variant)
    if target is None or PRETRAINED_CFGS[target].variant != variant:
        known = sorted(v for v in ALIASES if v in {c.variant for c in PRETRAINED_CFGS.values()})
        raise ValueError(
            f"no released ImageNet weights for encoder {variant!r} (released: {known}); pass a weight file or "
            "hf://owner/repo/file as pretrained, or pretrained=False."
        )
    return target
