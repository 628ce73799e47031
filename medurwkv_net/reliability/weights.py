"""Safe weight loading under its former module name (it lives in :mod:`medurwkv_net.core.weights`)."""

from __future__ import annotations

from medurwkv_net.core.weights import file_sha256, safe_load_weights, safe_torch_load, verify_sha256

__all__ = ["file_sha256", "safe_load_weights", "safe_torch_load", "verify_sha256"]
