"""The CUDA kernels' math, compiled for the CPU: ``csrc/bi_wkv_math.cuh`` (the functions the ``.cu`` kernels
call, with their chunk and tile sizes, the warp scan emulated lane by lane and the chain over tiles tile by
tile) against the float64 definition.

The harness is a small C++ program (``harness/cuda_math_harness.cpp``) built once per module with the host
compiler; a build with a planted bug (two carry slots swapped, a distance term dropped) must fail the
same comparison.
"""
from __future__ import annotations

import re

import pytest
import torch

from medurwkv_net.ops import bi_wkv_check as chk

from .harness import cuda_math

CHUNK = 16  # biwkv::kChunk; 32 chunks per warp scan = one tile of 512 tokens
MUTATIONS = ("BIWKV_MUTATE_SWAP_SLOTS", "BIWKV_MUTATE_DROP_DISTANCE")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return cuda_math.build(tmp_path_factory.mktemp("cuda_math"))


def make_inputs(B, T, C, seed, v_offset=0.0, v_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    u = (torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / T
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64) * v_scale + v_offset
    gy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    return w, u, k, v, gy


def harness_errors(exe, dtype, w, u, k, v, gy, work):
    """Errors of the harness run as the kernel runs for inputs of ``dtype`` (inputs rounded to it, float32
    accumulation for float32/float16/bfloat16, results rounded to it) against float64 on the same inputs."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w, u = w.to(acc), u.to(acc)
    k, v, gy = k.to(dtype), v.to(dtype), gy.to(dtype)
    out = cuda_math.run(exe, w, u, k, v, gy, 64 if dtype == torch.float64 else 32, work)
    y = out["y"].to(dtype)
    grads = (out["gw"].to(acc), out["gu"].to(acc), out["gk"].to(dtype), out["gv"].to(dtype))
    y_ref, grads_ref = chk.reference(w, u, k, v, gy)
    return chk.errors(y, grads, y_ref, grads_ref, v, gy)


@pytest.mark.parametrize("T", [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 32 * CHUNK - 1, 32 * CHUNK, 32 * CHUNK + 1, 1100,
                               3 * 32 * CHUNK + 5 * CHUNK + 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_float64_at_chunk_boundaries(harness, tmp_path, T, dtype):
    errs = harness_errors(harness, dtype, *make_inputs(2, T, 3, seed=T), tmp_path)
    assert chk.within_tolerance(errs, dtype), errs


def test_float32_at_long_sequences(harness, tmp_path):
    """T = 65536 (128 scan groups): the float64 chunk scan keeps float32 output and gradients within 1e-5 (a
    float32 scan lost up to 3e-5 here)."""
    errs = harness_errors(harness, torch.float32, *make_inputs(1, 65536, 4, seed=2), tmp_path)
    assert chk.within_tolerance(errs, torch.float32), errs


@pytest.mark.parametrize("T", [CHUNK + 3, 600])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_keep_float32_accumulation(harness, tmp_path, T, dtype):
    errs = harness_errors(harness, dtype, *make_inputs(2, T, 5, seed=T + 1), tmp_path)
    assert chk.within_tolerance(errs, dtype), errs
    assert max(errs[n] for n in ("gw", "gu", "gk", "gv")) <= 1e-2


@pytest.mark.parametrize("T", [CHUNK, 700])
def test_float32_exact_with_a_large_offset_in_v(harness, tmp_path, T):
    """v = 1000 + N(0, 1): the centred formulation keeps output and all gradients within 1e-5."""
    errs = harness_errors(harness, torch.float32, *make_inputs(2, T, 4, seed=3, v_offset=1000.0, v_scale=1.0),
                          tmp_path)
    assert max(errs.values()) <= 1e-5, errs


@pytest.mark.parametrize("w_value", [-2.0, 50.0, -50.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_decay_stays_finite_and_exact(harness, tmp_path, w_value, dtype):
    """|w * T| far beyond exp's range, and a k range of 200: the log-scaled sums need no fallback. In float32
    the log-weights (|t - i| - 1) w themselves carry a rounding of about 6e-8 |w| T (the float32 ulp of
    |w| T = 15000 is 1e-3): the tolerance grows with it."""
    w, u, k, v, gy = make_inputs(1, 300, 3, seed=6)
    w = torch.full((3,), w_value, dtype=torch.float64)
    u = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    k[0, 7, 1] = 100.0
    k[0, 9, 2] = -100.0
    errs = harness_errors(harness, dtype, w, u, k, v, gy, tmp_path)
    tol = 1e-10 if dtype == torch.float64 else 1e-4 + 1e-7 * abs(w_value) * 300
    assert max(errs.values()) <= tol, errs


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_planted_bug_fails_the_comparison(harness, tmp_path_factory, tmp_path, mutation):
    """The comparison catches a broken kernel: the same check passes with the real header and fails when
    the header is compiled with a planted bug."""
    case = make_inputs(2, 32 * CHUNK + 40, 3, seed=9)  # two scan groups and a partial chunk
    good = harness_errors(harness, torch.float64, *case, tmp_path)
    assert chk.within_tolerance(good, torch.float64), good
    mutant = cuda_math.build(tmp_path_factory.mktemp("mutant"), defines=[mutation])
    bad = harness_errors(mutant, torch.float64, *case, tmp_path)
    assert not chk.within_tolerance(bad, torch.float64), bad


def test_the_kernels_run_the_shared_math():
    """The .cu kernels and the CPU kernel's wide-range path call the header's functions (nothing of the
    math is written out a second time in the .cu)."""
    cu = (cuda_math.CSRC / "bi_wkv_cuda.cu").read_text()
    cpu = (cuda_math.CSRC / "bi_wkv_cpu.cpp").read_text()
    for src in (cu, cpu):
        assert '#include "bi_wkv_math.cuh"' in src
    for fn in ("fwd_chunk_carry", "fwd_chunk_output", "bwd_chunk_carry", "bwd_chunk_output", "scan_combine",
               "scan_exclusive", "scan_next_run", "lane_chunk", "tile_at"):
        assert f"biwkv::{fn}" in cu, fn
    assert not re.search(r"\bexpf?\(|__expf", cu), "exponentials belong in bi_wkv_math.cuh"
    for fn in ("host_forward", "host_backward"):
        assert f"biwkv::{fn}" in cpu, fn
