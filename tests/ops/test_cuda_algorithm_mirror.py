"""Line-by-line float64 mirror of the three-phase CUDA algorithm (csrc/bi_wkv_cuda.cu), run on CPU.

No GPU is needed: this checks the algorithm the CUDA kernels implement (chunk carries, the
warp-level Kogge-Stone scan over chunks in groups of 32 lanes with its running state, distance
sums for dw, in-chunk recurrences, gradient identities) against the O(T^2) definition, including
T that leave a partial last chunk and more than 32 chunks. benchmarks/gpu_check.sh runs the real
kernels against the same reference on a GPU.
"""
from __future__ import annotations

import math

import pytest
import torch

from medurwkv_net.ops import bi_wkv_ref


def scan_carries(carry, w, L, M, with_d):
    """Mirror of scan_carries: carry [B, N, C, P] -> state [B, N, C, P] (float64)."""
    B, N, C, P = carry.shape
    a = torch.exp(-w * L)  # [C]
    apow = [a]
    for _ in range(5):
        apow.append(apow[-1] * apow[-1])
    state = torch.zeros_like(carry)
    lane = torch.arange(32)[:, None, None]  # lanes on the first axis
    for d in range(2):
        s_off = 2 * d * M if with_d else d * M
        d_off = (2 * d + 1) * M
        run_s = torch.zeros(M, B, C, dtype=carry.dtype)
        run_d = torch.zeros(M, B, C, dtype=carry.dtype)
        for base in range(0, N, 32):
            pos = base + torch.arange(32)
            valid = pos < N
            n = pos if d == 0 else N - 1 - pos
            s = torch.zeros(M, 32, B, C, dtype=carry.dtype)
            dd = torch.zeros(M, 32, B, C, dtype=carry.dtype)
            for m in range(M):
                for j in range(32):
                    if valid[j]:
                        s[m, j] = carry[:, n[j], :, s_off + m]
                        if with_d:
                            dd[m, j] = carry[:, n[j], :, d_off + m]
            for st in range(5):
                off = 1 << st
                ps = torch.cat([s[:, :off], s[:, :-off]], 1)  # __shfl_up_sync: lane - off (own value below)
                pd = torch.cat([dd[:, :off], dd[:, :-off]], 1)
                take = (lane >= off)
                if with_d:
                    dd = torch.where(take, dd + apow[st] * (pd + off * L * ps), dd)
                s = torch.where(take, s + apow[st] * ps, s)
            apl = torch.ones(32, 1, C, dtype=carry.dtype)
            for st in range(5):
                bit = ((lane & (1 << st)) != 0)
                apl = torch.where(bit, apl * apow[st], apl)
            ps = torch.cat([s[:, :1], s[:, :-1]], 1)
            pd = torch.cat([dd[:, :1], dd[:, :-1]], 1)
            first = lane == 0
            ex_s = torch.where(first, 0.0, ps) + apl * run_s[:, None]
            ex_d = torch.where(first, 0.0, pd) + apl * (run_d[:, None] + lane * L * run_s[:, None])
            for j in range(32):
                if valid[j]:
                    for m in range(M):
                        state[:, n[j], :, s_off + m] = ex_s[m, j]
                        if with_d:
                            state[:, n[j], :, d_off + m] = ex_d[m, j]
            a32 = apow[5]
            new_d = dd[:, 31] + a32 * (run_d + 32.0 * L * run_s)
            run_s = s[:, 31] + a32 * run_s
            run_d = new_d
    return state


def mirror_forward(w, u, k, v, L):
    B, T, C = k.shape
    N = math.ceil(T / L)
    kmax = k.amax(1)
    ew, eu = torch.exp(-w), torch.exp(u)
    e = torch.exp(k - kmax[:, None])
    carry = torch.zeros(B, N, C, 4, dtype=k.dtype)
    for n in range(N):
        l0 = l1 = r0 = r1 = 0.0
        f = torch.ones(C, dtype=k.dtype)
        for t in range(n * L, min(T, n * L + L)):
            x0 = e[:, t] * v[:, t]
            l0, l1 = ew * l0 + x0, ew * l1 + e[:, t]
            r0, r1 = r0 + f * x0, r1 + f * e[:, t]
            f = f * ew
        carry[:, n] = torch.stack([l0 + 0 * f, l1 + 0 * f, r0, r1], -1)
    state = scan_carries(carry, w, L, 2, False)
    y = torch.empty_like(k)
    for n in range(N):
        ts = list(range(n * L, min(T, n * L + L)))
        rn, rd = {}, {}
        sn, sd = state[:, n, :, 2], state[:, n, :, 3]
        for t in reversed(ts):
            rn[t], rd[t] = sn, sd
            sn, sd = ew * sn + e[:, t] * v[:, t], ew * sd + e[:, t]
        sn, sd = state[:, n, :, 0], state[:, n, :, 1]
        for t in ts:
            s = eu * e[:, t]
            y[:, t] = (sn + rn[t] + s * v[:, t]) / (sd + rd[t] + s)
            sn, sd = ew * sn + e[:, t] * v[:, t], ew * sd + e[:, t]
    return y


def mirror_backward(w, u, k, v, y, gy, L):
    B, T, C = k.shape
    N = math.ceil(T / L)
    kmax = k.amax(1)
    ew, eu = torch.exp(-w), torch.exp(u)
    e = torch.exp(k - kmax[:, None])
    dc = torch.zeros(B, N, C, 2, dtype=k.dtype)
    for n in range(N):
        left = r = 0.0
        f = torch.ones(C, dtype=k.dtype)
        for t in range(n * L, min(T, n * L + L)):
            left, r = ew * left + e[:, t], r + f * e[:, t]
            f = f * ew
        dc[:, n] = torch.stack([left + 0 * f, r], -1)
    dstate = scan_carries(dc, w, L, 1, False)
    g = torch.empty_like(k)
    carry = torch.zeros(B, N, C, 8, dtype=k.dtype)
    for n in range(N):
        ts = list(range(n * L, min(T, n * L + L)))
        rd = {}
        s = dstate[:, n, :, 1]
        for t in reversed(ts):
            rd[t] = s
            s = ew * s + e[:, t]
        s = dstate[:, n, :, 0]
        z = torch.zeros(B, C, dtype=k.dtype)
        l0, l1, ld0, ld1, r0, r1, rd0, rd1 = (z.clone() for _ in range(8))
        f = torch.ones(C, dtype=k.dtype)
        for j, t in enumerate(ts):
            g[:, t] = gy[:, t] / (s + rd[t] + eu * e[:, t])
            gyy = g[:, t] * y[:, t]
            s = ew * s + e[:, t]
            ld0, ld1 = ew * (ld0 + l0), ew * (ld1 + l1)
            l0, l1 = ew * l0 + g[:, t], ew * l1 + gyy
            r0, r1 = r0 + f * g[:, t], r1 + f * gyy
            rd0, rd1 = rd0 + j * f * g[:, t], rd1 + j * f * gyy
            f = f * ew
        carry[:, n] = torch.stack([l0, l1, ld0, ld1, r0, r1, rd0, rd1], -1)
    state = scan_carries(carry, w, L, 2, True)
    gk, gv = torch.empty_like(k), torch.empty_like(k)
    du = torch.zeros(C, dtype=k.dtype)
    dw = torch.zeros(C, dtype=k.dtype)
    for n in range(N):
        ts = list(range(n * L, min(T, n * L + L)))
        sp = state[:, n]
        rs0, rs1, rdd0, rdd1 = {}, {}, {}, {}
        s0, s1, d0, d1 = sp[..., 4], sp[..., 5], sp[..., 6], sp[..., 7]
        for t in reversed(ts):
            rs0[t], rs1[t], rdd0[t], rdd1[t] = s0, s1, d0, d1
            gyy = g[:, t] * y[:, t]
            d0, d1 = ew * (d0 + s0), ew * (d1 + s1)
            s0, s1 = ew * s0 + g[:, t], ew * s1 + gyy
        s0, s1, d0, d1 = sp[..., 0], sp[..., 1], sp[..., 2], sp[..., 3]
        for t in ts:
            eug = eu * g[:, t]
            dv = e[:, t] * (s0 + rs0[t] + eug)
            gv[:, t] = dv
            gk[:, t] = v[:, t] * dv - e[:, t] * (s1 + rs1[t] + eug * y[:, t])
            du = du + (eug * e[:, t] * (v[:, t] - y[:, t])).sum(0)
            dw = dw - (e[:, t] * (v[:, t] * (d0 + rdd0[t]) - (d1 + rdd1[t]))).sum(0)
            d0, d1 = ew * (d0 + s0), ew * (d1 + s1)
            s0, s1 = ew * s0 + g[:, t], ew * s1 + g[:, t] * y[:, t]
    return dw, du, gk, gv


@pytest.mark.parametrize("T, L", [(1, 4), (7, 4), (45, 4), (150, 4), (37, 32)])
def test_cuda_algorithm_mirror_matches_reference(T, L):
    """150 / 4 = 38 chunks: more than one group of 32 lanes, partial last chunk."""
    g = torch.Generator().manual_seed(T)
    B, C = 2, 3
    w = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    u = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    gy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    ins = [x.clone().requires_grad_(True) for x in (w, u, k, v)]
    y_ref = bi_wkv_ref(*ins)
    g_ref = torch.autograd.grad(y_ref, ins, gy)
    y = mirror_forward(w, u, k, v, L)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-10, atol=1e-10)
    grads = mirror_backward(w, u, k, v, y, gy, L)
    for name, a, b in zip("wukv", grads, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name}: {m}")
