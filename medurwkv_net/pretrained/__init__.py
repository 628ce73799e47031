"""Released Vision-RWKV weights: the registry, loading (local / hf:// / registry name), inflation to 3D,
conversion, and the builder that constructs a Med-URWKV network and fills its encoder.

This package may import :mod:`medurwkv_net.networks`; the networks never import it.
"""

from ..core import errors as _errors
from .builder import create_medurwkv, load_pretrained
from .registry import (
    ALIASES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRETRAINED_CFGS,
    PretrainedCfg,
    get_pretrained_cfg,
    list_pretrained,
    pretrained_name_for,
    register_pretrained,
)
from .weights import (
    LoadReport,
    adapt_input_conv,
    checkpoint_filter_fn,
    convert_weights,
    git_blob_sha1,
    hub_sha256,
    load_checkpoint,
    load_vrwkv_weights,
    resolve_source,
    verify_hub_file,
)

__all__ = [
    "ALIASES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRETRAINED_CFGS",
    "LoadReport",
    "PretrainedCfg",
    "adapt_input_conv",
    "checkpoint_filter_fn",
    "convert_weights",
    "create_medurwkv",
    "get_pretrained_cfg",
    "git_blob_sha1",
    "hub_sha256",
    "list_pretrained",
    "load_checkpoint",
    "load_pretrained",
    "load_vrwkv_weights",
    "pretrained_name_for",
    "register_pretrained",
    "resolve_source",
    "verify_hub_file",
]

if _errors.running_monai_bundle():  # `python -m monai.bundle run ...`: weights that cannot be had are one message
    _errors.install_error_hook()
