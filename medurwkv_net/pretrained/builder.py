"""Building a Med-URWKV network with pretrained weights (timm's builder idea: construct, then load).

The network classes do no I/O. :func:`create_medurwkv` builds :class:`~medurwkv_net.networks.MedURWKV` and,
when asked, fills its encoder through :func:`load_pretrained`: 2D networks take the released 2D weights as they
are (:func:`~medurwkv_net.pretrained.weights.load_vrwkv_weights`), 3D networks take them inflated to 3D
(:func:`~medurwkv_net.pretrained.inflate.load_inflated_vrwkv_weights`). The bundles name
``medurwkv_net.create_medurwkv`` in their ``network_def``.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch.nn as nn

from ..networks.medurwkv import MedURWKV
from .inflate import load_inflated_vrwkv_weights
from .registry import pretrained_name_for
from .weights import LoadReport, load_vrwkv_weights

__all__ = ["create_medurwkv", "load_pretrained", "pretrained_source"]

PretrainedArg = Union[bool, str, "os.PathLike[str]", None]


def pretrained_source(pretrained: PretrainedArg, encoder: str) -> Optional[str]:
    """The weight source a ``pretrained`` argument asks for, or None for none.

    Args:
        pretrained: ``False``/``None`` (no weights), ``True`` (the released ImageNet weights of ``encoder``, from
            the registry), or a source: a registry name or alias, a local ``.pth``/``.safetensors`` file, or
            ``hf://owner/repo/file[@revision]``.
        encoder: the encoder variant, for ``True``.

    Raises:
        ValueError: a value of another type, an empty string, or ``True`` for a variant without released weights.
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return pretrained_name_for(encoder)
    if isinstance(pretrained, (str, os.PathLike)) and os.fspath(pretrained).strip():
        return os.fspath(pretrained)
    raise ValueError(
        f"pretrained must be False, True, a registry name, a weight file or hf://owner/repo/file, got {pretrained!r}."
    )


def load_pretrained(
    net: nn.Module,
    source: Union[str, "os.PathLike[str]"],
    strict: bool = True,
    cache_dir: Optional[str] = None,
    sha256: Optional[str] = None,
) -> LoadReport:
    """Fill the encoder of a Med-URWKV network (or a VRWKV backbone) with released 2D weights.

    A 3D network's encoder gets them inflated (:mod:`medurwkv_net.pretrained.inflate`). The decoder keeps its
    initialisation. Sets ``net.pretrained_source`` when ``net`` has that attribute.

    Args:
        net: a :class:`~medurwkv_net.networks.MedURWKV`, or a :class:`~medurwkv_net.networks.VRWKV`.
        source: registry name or alias, local ``.pth``/``.safetensors`` file, or ``hf://owner/repo/file[@rev]``.
        strict: raise ValueError on any missing / unexpected / mis-shaped key.
        cache_dir: Hugging Face cache folder for downloads (default: the Hub's).
        sha256: expected SHA-256 of the file (overrides the registry's).

    Returns:
        the :class:`~medurwkv_net.pretrained.weights.LoadReport`.
    """
    encoder = getattr(net, "encoder", net)
    if getattr(encoder, "spatial_dims", 2) == 3:
        report = load_inflated_vrwkv_weights(encoder, source, strict=strict, cache_dir=cache_dir, sha256=sha256)
    else:
        report = load_vrwkv_weights(encoder, source, strict=strict, cache_dir=cache_dir, sha256=sha256)
    if hasattr(net, "pretrained_source"):
        setattr(net, "pretrained_source", os.fspath(source))
    return report


def create_medurwkv(
    spatial_dims: int = 2,
    *,
    pretrained: PretrainedArg = False,
    hf_cache_dir: Optional[str] = None,
    pretrained_sha256: Optional[str] = None,
    **kwargs: Any,
) -> MedURWKV:
    """Build a :class:`~medurwkv_net.networks.MedURWKV`, with ImageNet weights in its encoder if asked.

    Args:
        spatial_dims: 2 (images) or 3 (volumes; the 2D weights are inflated).
        pretrained: ``False`` (random initialisation); ``True`` for the released ImageNet-1K weights of
            ``encoder`` (registry :mod:`medurwkv_net.pretrained.registry`); or a weight source: registry name,
            local ``.pth``/``.safetensors`` file, ``hf://owner/repo/file[@revision]``. The RGB patch embedding is
            adapted to ``in_channels`` (every channel gets the RGB-summed kernel divided by ``in_channels``).
        hf_cache_dir: Hugging Face cache folder for downloads (default: the Hub's).
        pretrained_sha256: expected SHA-256 of the weight file (overrides the registry's).
        kwargs: the other arguments of :class:`~medurwkv_net.networks.MedURWKV` (``in_channels``,
            ``out_channels``, ``img_size``, ``encoder``, ``feature_size``, ``patch_size``, ...).

    Returns:
        the network, in training mode, ``pretrained_source`` set to the source loaded (None without weights).

    Raises:
        ValueError: a bad argument (see :class:`~medurwkv_net.networks.MedURWKV`), a bad ``pretrained`` value, or
            weights that do not fit the encoder (every missing / unexpected / mis-shaped key named).
        FileNotFoundError: the weight file cannot be had; the message says where it was looked for and what to do.

    Examples::

        >>> net = create_medurwkv(spatial_dims=2, in_channels=1, out_channels=3, img_size=256, pretrained=True)
        >>> vol = create_medurwkv(spatial_dims=3, in_channels=1, out_channels=2, pretrained="vrwkv_t_in1k_224.pth")
    """
    source = pretrained_source(pretrained, kwargs.get("encoder", "tiny"))
    net = MedURWKV(spatial_dims=spatial_dims, **kwargs)
    if source is not None:
        load_pretrained(net, source, strict=True, cache_dir=hf_cache_dir, sha256=pretrained_sha256)
    return net
