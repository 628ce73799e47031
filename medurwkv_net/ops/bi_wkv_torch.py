"""Linear-time Bi-WKV in plain PyTorch (chunked scan in log-scaled form).

This is the backend used where no compiled kernel is available and whenever the op is scripted,
traced or exported (TorchScript, ``torch.export``, ONNX): it uses only differentiable, exportable
tensor operations (einsum, exp, maximum, pad, flip, cat) and never allocates a ``T x T`` buffer.

Algorithm (per batch row ``b`` and channel ``c``; ``docs/DESIGN.md`` section 2)::

    out_t = (F_t + G_t + e^{u + k_t} v_t) / (F'_t + G'_t + e^{u + k_t})
    F_t   = sum_{i < t} e^{-(t - 1 - i) w + k_i} v_i      (left scan)
    G_t   = sum_{i > t} e^{-(i - 1 - t) w + k_i} v_i      (right scan = left scan of the flipped input)

Both scans are computed at once (the flipped sequence is stacked on the batch axis). The sequence is
cut into chunks of ``L`` tokens. Inside a chunk the left scan is a product with a per-channel
``[L + 1, L]`` decay matrix (row ``L`` is the chunk's carry to the next chunk); across chunks a short
recurrence over ``ceil(T / L)`` steps carries the state (with ``loop_free=True``, a masked
``[N, N]`` product over the chunks instead, whose graph does not depend on T: the form exported with
dynamic sizes). Every partial sum is stored as
``exp(scale) * mantissa`` with a detached ``scale`` chosen so that every exponential evaluated is
``<= 1``: no overflow for any ``w`` (including large ``|w * T|``) or ``k``, and float32 error that grows
with the number of chunks rather than with ``T``. The scales only stabilise the arithmetic; they
cancel exactly in ``num / den``, so gradients are exact.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

__all__ = ["bi_wkv_torch", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 64


def _seq(x: torch.Tensor, B: int, T: int) -> List[torch.Tensor]:
    """[2B, N, L, C] stacked scans -> [left part [B, T, C], right part [B, T, C]] in token order."""
    y = x.reshape(2 * B, x.shape[1] * x.shape[2], x.shape[3])[:, :T]
    return [y[:B], y[B:].flip(1)]


def _carries_loop(
    h: torch.Tensor, eta_num: torch.Tensor, eta_den: torch.Tensor, decay: torch.Tensor, neg: float
) -> List[torch.Tensor]:
    """State entering each chunk by the recurrence ``S_{n+1} = exp(decay) S_n + exp(h_n) eta_n``.

    All tensors are float64 ``[2B, N, C]`` (``decay``: ``[C]``). Returns ``[s, sigma_num, sigma_den]``
    (``[2B, N, C]`` each) with ``S_n = exp(s_n) * sigma_n``; ``S_0`` is empty (``s_0 = neg``, ``sigma_0 = 0``).
    """
    z2 = h.shape[0]
    n_chunks = h.shape[1]
    c = h.shape[2]
    s = torch.full((z2, c), neg, device=h.device, dtype=h.dtype)
    sig_n = torch.zeros((z2, c), device=h.device, dtype=h.dtype)
    sig_d = torch.zeros((z2, c), device=h.device, dtype=h.dtype)
    s_list: List[torch.Tensor] = []
    n_list: List[torch.Tensor] = []
    d_list: List[torch.Tensor] = []
    for n in range(n_chunks):
        s_list.append(s)
        n_list.append(sig_n)
        d_list.append(sig_d)
        if n + 1 < n_chunks:
            hn = h[:, n]
            s_new = torch.maximum(s + decay, hn).detach()
            a = torch.exp(s + decay - s_new)
            b = torch.exp(hn - s_new)
            sig_n = sig_n * a + eta_num[:, n] * b
            sig_d = sig_d * a + eta_den[:, n] * b
            s = s_new
    return [torch.stack(s_list, 1), torch.stack(n_list, 1), torch.stack(d_list, 1)]


def _carries_dense(
    h: torch.Tensor, eta_num: torch.Tensor, eta_den: torch.Tensor, decay: torch.Tensor, neg: float
) -> List[torch.Tensor]:
    """:func:`_carries_loop` without a loop: ``S_n = sum_{m < n} exp((n - 1 - m) decay + h_m) eta_m``.

    Every term is scaled by the largest exponent of its row ``n`` (so each factor is ``<= 1`` and the
    largest is 1, as in the recurrence); costs ``O(N^2 C)`` per batch row, which is small next to the
    in-chunk work for any practical T (N = T / chunk).
    """
    n_chunks = h.shape[1]
    pos = torch.arange(n_chunks, device=h.device, dtype=h.dtype)
    lag = pos[:, None] - 1.0 - pos[None, :]  # [N (n), N (m)]
    valid = (lag >= 0.0)[None, :, :, None]
    expo = lag[None, :, :, None] * decay + h[:, None, :, :]  # [2B, N, N, C]
    empty = torch.full((), neg, device=h.device, dtype=h.dtype)  # 0-dim: no [N, N] constant in a graph
    expo = torch.where(valid, expo, empty)
    s = expo.amax(dim=2).detach()  # [2B, N, C]; row 0 is neg (empty)
    p = torch.where(valid, torch.exp(expo - s[:, :, None, :]), torch.zeros((), device=h.device, dtype=h.dtype))
    return [s, torch.einsum("znmc,zmc->znc", p, eta_num), torch.einsum("znmc,zmc->znc", p, eta_den)]


def bi_wkv_torch(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    loop_free: bool = False,
) -> torch.Tensor:
    """Bi-WKV in O(T * chunk) time and O(B * T * C) memory, pure PyTorch.

    Args:
        w: ``[C]`` decay per token step (already divided by T by the caller; any finite value).
        u: ``[C]`` bonus of the current token (already divided by T).
        k: ``[B, T, C]`` keys.
        v: ``[B, T, C]`` values.
        chunk: tokens per chunk (``>= 1``); trades the ``O(T * chunk)`` in-chunk work against the
            ``T / chunk`` sequential steps across chunks.
        loop_free: carry the state across chunks with one masked ``[N, N]`` product instead of a Python
            loop over the ``N = ceil(T / chunk)`` chunks, and use exactly ``chunk`` tokens per chunk (the
            last one padded, plus one padded chunk) even when T is smaller: no Python control flow depends on T, so
            ``torch.export`` / ONNX export with a dynamic T keep the graph valid for every T. Same results
            (to rounding); used while exporting.

    Returns:
        ``[B, T, C]`` tensor in the dtype of ``k``. float16/bfloat16 are computed in float32,
        float32 in float32, float64 in float64.

    Raises:
        ValueError: if ``chunk < 1`` or ``k`` is not 3-D.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if k.dim() != 3:
        raise ValueError(f"k must be [B, T, C], got shape {list(k.shape)}")
    out_dtype = k.dtype
    _NEG = -1.0e30  # log-scale of an empty partial sum: exp(_NEG - anything finite) == 0
    wd = torch.float64 if k.dtype == torch.float64 else torch.float32
    w = w.to(wd)
    u = u.to(wd)
    k = k.to(wd)
    v = v.to(wd)
    B = k.shape[0]
    T = k.shape[1]
    C = k.shape[2]
    L = chunk if loop_free else min(chunk, T)
    N = (T + L - 1) // L
    if loop_free:
        # one more (empty) chunk: N >= 2 for every T, so a symbolic N is never taken to be 1 (a size-1
        # axis that an exported graph would then broadcast instead of keep)
        N = N + 1
    pad = N * L - T

    # Left scan of the sequence and of its mirror image, stacked on the batch axis.
    kk = torch.cat([k, k.flip(1)], 0)
    vv = torch.cat([v, v.flip(1)], 0)
    if loop_free or pad > 0:
        # Padding sits after the last real token: it only reaches (discarded) padded outputs.
        kk = F.pad(kk, (0, 0, 0, pad))
        vv = F.pad(vv, (0, 0, 0, pad))
    kk = kk.reshape(2 * B, N, L, C)
    vv = vv.reshape(2 * B, N, L, C)
    kmax = kk.amax(dim=2, keepdim=True).detach()  # [2B, N, 1, C]
    e = torch.exp(kk - kmax)  # <= 1
    z = torch.cat([e * vv, e], 0)  # [4B, N, L, C]: numerator and denominator terms

    # In-chunk decay matrix D[c, t, i] = exp(-(t - 1 - i) w_c - rho[c, t]) for i < t, rows t = 0..L.
    tpos = torch.arange(L + 1, device=k.device, dtype=wd)
    ipos = torch.arange(L, device=k.device, dtype=wd)
    dist = tpos[:, None] - 1.0 - ipos[None, :]  # [L+1, L]
    valid = dist >= 0.0
    expo = -dist[None, :, :] * w[:, None, None]  # [C, L+1, L]
    # 0-dim fill values: an exported graph would otherwise store [C, L+1, L] constants for every layer
    neg = torch.full((), _NEG, device=k.device, dtype=wd)
    zero = torch.zeros((), device=k.device, dtype=wd)
    rho = torch.where(valid[None], expo, neg).amax(dim=2).detach()  # [C, L+1]; row 0 is _NEG
    rho = torch.where(rho > 0.5 * _NEG, rho, zero)
    dmat = torch.exp(torch.where(valid[None], expo - rho[:, :, None], neg))  # [C, L+1, L], <= 1
    intra = torch.einsum("cti,znic->zntc", dmat, z)  # [4B, N, L+1, C]

    rho_t = rho.transpose(0, 1)  # [L+1, C]
    # Carry of chunk n to the first token of chunk n + 1: exp(h) * eta.
    h = (rho_t[L][None, None, :] + kmax[:, :, 0, :]).detach()  # [2B, N, C]
    eta_num = intra[: 2 * B, :, L, :]
    eta_den = intra[2 * B :, :, L, :]

    # Recurrence over chunks: S_{n+1} = exp(-L w) S_n + carry_n, kept as exp(s) * sigma. It runs in
    # float64 (tensors of [2B, N, C], or [2B, N, N, C] in the loop-free form) so that the repeated decay
    # factor adds no float32 bias; the scales are then rounded to whole numbers (exact in the working
    # dtype) before casting back.
    rd = torch.float64
    decay = -float(L) * w.to(rd)  # [C]
    h64 = h.to(rd)
    eta_n64 = eta_num.to(rd)
    eta_d64 = eta_den.to(rd)
    if loop_free:
        carries = _carries_dense(h64, eta_n64, eta_d64, decay, _NEG)
    else:
        carries = _carries_loop(h64, eta_n64, eta_d64, decay, _NEG)
    s64 = carries[0]  # [2B, N, C]
    s_round = torch.round(s64).detach()
    shift = torch.exp(s64 - s_round)  # in [e^-0.5, e^0.5]
    s_all = s_round.to(wd)
    sn_all = (carries[1] * shift).to(wd)
    sd_all = (carries[2] * shift).to(wd)

    jpos = ipos  # position inside the chunk
    # Inter-chunk part at token (n, j): exp(s_n - j w) * sigma_n.
    lam_inter = s_all[:, :, None, :] - jpos[None, None, :, None] * w  # [2B, N, L, C]
    m_inter_n = sn_all[:, :, None, :].expand(2 * B, N, L, C)
    m_inter_d = sd_all[:, :, None, :].expand(2 * B, N, L, C)
    # In-chunk part at token (n, j): exp(rho_j + kmax_n) * intra; row 0 is empty.
    lam_intra = rho_t[:L][None, None, :, :] + kmax  # [2B, N, L, C]
    empty = (jpos == 0.0)[None, None, :, None]
    lam_intra = torch.where(empty, neg, lam_intra)
    m_intra_n = intra[: 2 * B, :, :L, :]
    m_intra_d = intra[2 * B :, :, :L, :]

    lam: List[torch.Tensor] = _seq(lam_inter, B, T) + _seq(lam_intra, B, T) + [u + k]
    mnum: List[torch.Tensor] = _seq(m_inter_n, B, T) + _seq(m_intra_n, B, T) + [v]
    mden: List[torch.Tensor] = _seq(m_inter_d, B, T) + _seq(m_intra_d, B, T) + [torch.ones_like(v)]
    mx = lam[0].detach()
    for p in range(1, 5):
        mx = torch.maximum(mx, lam[p].detach())
    num = torch.zeros_like(k)
    den = torch.zeros_like(k)
    for p in range(5):
        f = torch.exp(lam[p] - mx)
        num = num + f * mnum[p]
        den = den + f * mden[p]
    return (num / den).to(out_dtype)
