"""Bi-WKV operator: autograd entry point and its pure-PyTorch reference twin.

Placeholder dispatch: the kernels (csrc/) and the linear-time PyTorch path replace this.
"""
from __future__ import annotations

import torch

__all__ = ["bi_wkv", "bi_wkv_ref"]


def bi_wkv_ref(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """O(T^2) definition of Bi-WKV (shared/DESIGN.md section 2), for tests only."""
    T = k.shape[1]
    t = torch.arange(T, device=k.device)
    dist = (t[:, None] - t[None, :]).abs().to(k.dtype)  # [T, T]
    logits = -(dist - 1)[None, :, :, None] * w.to(k.dtype) + k[:, None, :, :]  # [B, T, T, C]
    eye = torch.eye(T, dtype=torch.bool, device=k.device)[None, :, :, None]
    logits = torch.where(eye, (u.to(k.dtype) + k)[:, None, :, :].expand_as(logits), logits)
    weights = torch.softmax(logits, dim=2)
    return (weights * v[:, None, :, :]).sum(dim=2)


def bi_wkv(w, u, k, v, backend: str = "auto"):
    return bi_wkv_ref(w, u, k, v)
