"""Released Vision-RWKV weights: registry, loading (local / hf:// / registry name) and conversion."""
from ..core import errors as _errors
from .weights import (
    PRETRAINED_CFGS,
    LoadReport,
    PretrainedCfg,
    adapt_input_conv,
    checkpoint_filter_fn,
    convert_weights,
    git_blob_sha1,
    hub_sha256,
    load_checkpoint,
    load_vrwkv_weights,
    register_pretrained,
    resolve_source,
    verify_hub_file,
)

__all__ = [
    "PRETRAINED_CFGS",
    "LoadReport",
    "PretrainedCfg",
    "adapt_input_conv",
    "checkpoint_filter_fn",
    "convert_weights",
    "git_blob_sha1",
    "hub_sha256",
    "load_checkpoint",
    "load_vrwkv_weights",
    "register_pretrained",
    "resolve_source",
    "verify_hub_file",
]

if _errors.running_monai_bundle():  # `python -m monai.bundle run ...`: weights that cannot be had are one message
    _errors.install_error_hook()
