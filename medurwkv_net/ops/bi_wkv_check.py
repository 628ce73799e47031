"""Accuracy of a Bi-WKV implementation against float64: the reference, the error metric and tolerances.

Used by the tests and by ``benchmarks/gpu_check.sh``. The metric is a relative norm error with a floor
at each quantity's natural scale, so that it stays meaningful where the true value vanishes (at T = 1,
dk, du and dw are exactly 0)::

    err(x) = ||x - x_ref|| / max(||x_ref||, 0.1 * floor(x))

with ``S = ||dy|| * rms(v - mean_t v)``: floor(y) = ||v||, floor(dv) = ||dy||, floor(dk) = floor(du) = S,
floor(dw) = S * max(1, (T - 1) / 3) (dw weighs every pair by its distance).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch

from .bi_wkv_interface import bi_wkv_ref
from .bi_wkv_torch import bi_wkv_torch

__all__ = ["NAMES", "TOLERANCES", "reference", "errors", "within_tolerance"]

NAMES = ("y", "gw", "gu", "gk", "gv")

#: (output, gradients) tolerances of ``errors`` per input dtype (float32 accumulation for the half
#: types: their error is the rounding of the results to the dtype).
TOLERANCES = {
    torch.float64: (1e-11, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (1.2e-2, 1e-2),
}


def reference(w, u, k, v, gy, exact_limit: int = 2048) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """float64 output and gradients ``(gw, gu, gk, gv)`` of the inputs as given (their values, in float64).

    The O(T^2) definition :func:`bi_wkv_ref` when ``T <= exact_limit``, else the float64 linear path.
    """
    ins = [x.detach().double().clone().requires_grad_(True) for x in (w, u, k, v)]
    fn = bi_wkv_ref if k.shape[1] <= exact_limit else bi_wkv_torch
    with torch.enable_grad():
        y = fn(*ins)
        grads = torch.autograd.grad(y, ins, gy.detach().double())
    return y.detach(), tuple(g.detach() for g in grads)


def _norm(x: torch.Tensor) -> float:
    return float(x.detach().double().norm())


def errors(y, grads: Sequence[torch.Tensor], y_ref, grads_ref: Sequence[torch.Tensor], v, gy) -> Dict[str, float]:
    """Errors (see the module docs) of the output ``y`` and gradients ``(gw, gu, gk, gv)``."""
    v64 = v.detach().double()
    T = v.shape[1]
    s = _norm(gy) * math.sqrt(float((v64 - v64.mean(1, keepdim=True)).pow(2).mean()))
    floors = {"y": _norm(v), "gw": s * max(1.0, (T - 1) / 3), "gu": s, "gk": s, "gv": _norm(gy)}
    out = {}
    for name, x, r in zip(NAMES, [y] + list(grads), [y_ref] + list(grads_ref)):
        diff = _norm(x.detach().double().to(r.device) - r)
        den = max(_norm(r), 0.1 * floors[name])
        out[name] = diff / den if den > 0 else diff
    return out


def within_tolerance(errs: Dict[str, float], dtype: torch.dtype) -> bool:
    """Whether ``errors`` are within :data:`TOLERANCES` for inputs of ``dtype`` (NaN fails)."""
    tol_out, tol_grad = TOLERANCES[dtype]
    return all(e <= (tol_out if n == "y" else tol_grad) for n, e in errs.items())
