"""Bi-WKV operator (Vision-RWKV's bidirectional WKV) with CPU, CUDA and pure-PyTorch backends."""

from .bi_wkv_interface import (
    BACKENDS,
    ENV_BACKEND,
    bi_wkv_kernel_backward,
    bi_wkv_kernel_forward,
    bi_wkv,
    bi_wkv_ref,
    check_inputs,
    resolve_backend,
)
from .bi_wkv_torch import bi_wkv_torch

__all__ = [
    "bi_wkv",
    "bi_wkv_ref",
    "bi_wkv_torch",
    "check_inputs",
    "resolve_backend",
    "bi_wkv_kernel_forward",
    "bi_wkv_kernel_backward",
    "BACKENDS",
    "ENV_BACKEND",
]
