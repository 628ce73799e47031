// Bi-WKV kernel math shared by the CUDA kernels (bi_wkv_cuda.cu), the CPU kernel's wide-range path
// (bi_wkv_cpu.cpp) and the CPU test harness of the CUDA algorithm: one source, two compilers.
//
// Definition (docs/DESIGN.md section 2), per batch row b and channel c, with lam = -w:
//   y_t = (sum_{i != t} exp((|t-i|-1) lam + k_i) v_i + exp(u + k_t) v_t) / (same with v = 1).
// Every sum is kept in log-scaled form exp(a) * s with a running maximum a (see LogSum::push): no
// exponential exceeds 1 and no sum overflows or underflows, for any finite w, u and k, in float32
// as in float64. Values are centred, v' = v - c0 with c0 = centre(): y' = y - c0 comes out of the
// same sums, and every gradient below uses only differences v' - y', so a large common offset in v
// does not cancel digits.
//
// Forward: left and right exclusive sums of x = (v', 1) with token log-weight q_t = k_t give
//   y'_t = num / den, lse_t = log den_t (stored for the backward, in the accumulation dtype).
// Backward, with g_t = dy_t exp(-lse_t): left and right exclusive sums S (and distance-weighted D)
// of x = (dy_t, dy_t y'_t) with log-weight q_t = -lse_t give
//   dv_i = e_i (S0_i + eu g_i),   dk_i = v'_i dv_i - e_i (S1_i + eu g_i y'_i),
//   du   = sum_i eu e_i g_i (v'_i - y'_i),   dw = -sum_i e_i (v'_i D0_i - D1_i),
// with e_i = exp(k_i), eu = exp(u); each product e_i * exp(a) is an attention weight (<= 1).
//
// The T axis is cut into chunks of kChunk tokens and the chunks into tiles of kWarp chunks (kTile tokens);
// one GPU thread per (b, chunk, c):
//   1. chunk_carry: the chunk's own left and right sums ("carries");
//   2. the carries are scanned over the chunks in float64: within a tile by one warp (Kogge-Stone over its
//      32 lanes, lane l = chunk l of the tile from the left, chunk 31 - l from the right), across tiles by a
//      running state chained from tile to tile in a fixed order (scan_combine, scan_exclusive, scan_next_run);
//   3. chunk output: the in-chunk recurrences started from the scanned states.
// The host code (CPU kernel, tests) runs the same functions; host_scan emulates the warp lane by lane and
// the chain tile by tile, with the kernels' chunk and tile sizes.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef __CUDACC__
#define BIWKV_HD __host__ __device__ __forceinline__
#else
#define BIWKV_HD inline
#endif
#if defined(__CUDACC__)
#define BIWKV_UNROLL _Pragma("unroll")
#else
#define BIWKV_UNROLL
#endif

namespace biwkv {

using std::int64_t;

constexpr int kChunk = 16;             // tokens per chunk (forward and backward)
constexpr int kWarp = 32;              // lanes of the chunk scan = chunks per tile
constexpr int kTile = kChunk * kWarp;  // tokens per tile

// Chunk of lane `lane` in tile `tile`: the left scan (dir 0) runs over a tile's chunks upwards, the right
// scan (dir 1) downwards; the chain over tiles likewise (tile_at).
BIWKV_HD int64_t lane_chunk(int64_t tile, int lane, int dir) {
  return tile * kWarp + (dir == 0 ? lane : kWarp - 1 - lane);
}
// The tile at place q of a direction's chain over n_tiles tiles.
BIWKV_HD int64_t tile_at(int64_t q, int64_t n_tiles, int dir) { return dir == 0 ? q : n_tiles - 1 - q; }

BIWKV_HD float ex(float x) { return expf(x); }
BIWKV_HD double ex(double x) { return exp(x); }
BIWKV_HD float lg(float x) { return logf(x); }
BIWKV_HD double lg(double x) { return log(x); }
template <typename A>
BIWKV_HD A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}
template <typename A>
BIWKV_HD A amax(A x, A y) {
  return x > y ? x : y;
}

// exp(a + n lam) * s[m] for M values, with distance-weighted companions exp(a + n lam) * d[m] when D.
// n counts the tokens pushed or shifted over since the scale a was last set, so that the scale is
// rounded once, not once per token or per chunk (a + lam + lam + ... would drift by an ulp of a per
// step: at T = 65536 that was 6e-6 of float32 error). Sums loaded from memory have n = 0.
template <typename A, int M, bool D>
struct LogSum {
  static constexpr int kSlots = 1 + (D ? 2 : 1) * M;  // floats in memory: scale, s[M], d[M]
  A a;
  A n;
  A s[M];
  A d[D ? M : 1];

  BIWKV_HD static LogSum empty() {
    LogSum r;
    r.a = neg_inf<A>();
    r.n = 0;
    for (int m = 0; m < M; ++m) r.s[m] = 0;
    for (int m = 0; m < (D ? M : 1); ++m) r.d[m] = 0;
    return r;
  }

  // The log-scale: exp(scale) * s[m] is the m-th sum.
  BIWKV_HD A scale(A lam) const { return a + n * lam; }

  // One token on: S <- exp(lam) S + exp(q) x and D <- exp(lam) (D + S). One exponential.
  BIWKV_HD void push(A lam, A q, const A (&x)[M]) {
    const A a1 = a + (n + 1) * lam;
    if (a1 >= q) {
      const A e = ex(q - a1);
      for (int m = 0; m < M; ++m) {
        if (D) d[m] += s[m];
        s[m] += e * x[m];
      }
      n += 1;
    } else {
      const A e = ex(a1 - q);  // 0 for an empty sum
      for (int m = 0; m < M; ++m) {
        if (D) d[m] = (d[m] + s[m]) * e;
        s[m] = s[m] * e + x[m];
      }
      a = q;
      n = 0;
    }
  }

  // The sum seen `steps` tokens further on (no new terms): scale += steps lam, D += steps S.
  BIWKV_HD LogSum shifted(A steps) const {
    LogSum r = *this;
    r.n = n + steps;
#ifndef BIWKV_MUTATE_DROP_DISTANCE
    if (D)
      for (int m = 0; m < M; ++m) r.d[m] += steps * s[m];
#endif
    return r;
  }

  // The sum with its scale fixed (what the output phase keeps per token: one register less than LogSum).
  struct Frozen {
    A a;
    A s[M];
    A d[D ? M : 1];
    BIWKV_HD A value(int m, A off) const { return ex(a + off) * s[m]; }
    BIWKV_HD A dist(int m, A off) const { return ex(a + off) * d[m]; }
  };
  BIWKV_HD Frozen frozen(A lam) const {
    Frozen r;
    r.a = scale(lam);
    for (int m = 0; m < M; ++m) r.s[m] = s[m];
    for (int m = 0; m < (D ? M : 1); ++m) r.d[m] = d[m];
    return r;
  }


  // Every field, unrounded (a tile's aggregate and chained state as the next tile reads them back).
  static constexpr int kRaw = kSlots + 1;
  template <typename P>
  BIWKV_HD void save_raw(P* p) const {
    p[0] = a;
    p[1] = n;
    for (int m = 0; m < M; ++m) p[2 + m] = s[m];
    if (D)
      for (int m = 0; m < M; ++m) p[2 + M + m] = d[m];
  }
  template <typename P>
  BIWKV_HD static LogSum load_raw(const P* p) {
    LogSum r;
    r.a = p[0];
    r.n = p[1];
    for (int m = 0; m < M; ++m) r.s[m] = p[2 + m];
    for (int m = 0; m < (D ? M : 1); ++m) r.d[m] = D ? p[2 + M + m] : A(0);
    return r;
  }

  // Memory holds the values in the accumulation dtype P (the chunk scan computes in float64).
  template <typename P>
  BIWKV_HD void store(P* p, A lam) const {
    p[0] = static_cast<P>(scale(lam));
    for (int m = 0; m < M; ++m) p[1 + m] = static_cast<P>(s[m]);
    if (D)
      for (int m = 0; m < M; ++m) p[1 + M + m] = static_cast<P>(d[m]);
  }
  template <typename P>
  BIWKV_HD static LogSum load(const P* p) {
    LogSum r;
    r.a = static_cast<A>(p[0]);
    r.n = 0;
    for (int m = 0; m < M; ++m) r.s[m] = static_cast<A>(p[1 + m]);
    for (int m = 0; m < (D ? M : 1); ++m) r.d[m] = D ? static_cast<A>(p[1 + M + m]) : A(0);
    return r;
  }
};

// Test hook: a planted bug (swapped slots of a chunk's left carry) that the CPU tests must catch; off
// unless BIWKV_MUTATE_SWAP_SLOTS is defined.
template <typename S>
BIWKV_HD void planted_bug(S& carry) {
#ifdef BIWKV_MUTATE_SWAP_SLOTS
  const auto t = carry.s[0];
  carry.s[0] = carry.s[1];
  carry.s[1] = t;
#else
  (void)carry;
#endif
}

// x + y for sums over disjoint terms (one exponential); the result keeps the larger one's scale.
template <typename A, int M, bool D>
BIWKV_HD LogSum<A, M, D> add(const LogSum<A, M, D>& x, const LogSum<A, M, D>& y, A lam) {
  if (y.a == neg_inf<A>()) return x;
  if (x.a == neg_inf<A>()) return y;
  const A sx = x.scale(lam), sy = y.scale(lam);
  const bool swap = sx < sy;  // selections by value: no reference to either operand (registers only)
  const A e = ex(swap ? sx - sy : sy - sx);
  LogSum<A, M, D> r;
  r.a = swap ? y.a : x.a;
  r.n = swap ? y.n : x.n;
  for (int m = 0; m < M; ++m) r.s[m] = swap ? y.s[m] + e * x.s[m] : x.s[m] + e * y.s[m];
  for (int m = 0; m < (D ? M : 1); ++m) r.d[m] = swap ? y.d[m] + e * x.d[m] : x.d[m] + e * y.d[m];
  return r;
}

// The centring value c0 of one (b, c): the mean of v over the first chunk (any value near the typical v
// would do; the kernels take it from this one definition, computed once per call into a [B, C] tensor).
template <typename A, typename T>
inline A centre(const T* v, int64_t stride, int64_t Tn) {
  const int64_t n = Tn < kChunk ? Tn : kChunk;
  A sum = 0;
  for (int64_t t = 0; t < n; ++t) sum += static_cast<A>(v[t * stride]);
  return sum / static_cast<A>(n);
}

template <typename A>
using FwdSum = LogSum<A, 2, false>;  // sums of e v' and e
template <typename A>
using BwdSum = LogSum<A, 2, true>;   // sums of g and g y' with distance sums
// The chunk scan's type for a chunk sum type S: float64 whatever the accumulation dtype (a float32 scan
// over thousands of chunks loses about 1e-5 of the gradients at T = 65536).
template <typename S>
struct ScanOf;
template <typename A, int M, bool D>
struct ScanOf<LogSum<A, M, D>> {
  using type = LogSum<double, M, D>;
};

// ---------------------------------------------------------------------------------------------
// Phase 1: a chunk's own sums. Pointers are at the chunk's first token; tokens are `stride` apart.
// left: the chunk's terms as seen after its last token; right: as seen before its first token.
template <typename A, typename T>
BIWKV_HD void fwd_chunk_carry(const T* k, const T* v, int64_t stride, int len, A lam, A c0, FwdSum<A>& left,
                              FwdSum<A>& right) {
  left = FwdSum<A>::empty();
  right = FwdSum<A>::empty();
BIWKV_UNROLL
  for (int j = 0; j < kChunk; ++j) {
    if (j < len) {
      const A x[2] = {static_cast<A>(v[j * stride]) - c0, A(1)};
      left.push(lam, static_cast<A>(k[j * stride]), x);
    }
  }
  planted_bug(left);
BIWKV_UNROLL
  for (int j = kChunk - 1; j >= 0; --j) {
    if (j < len) {
      const A x[2] = {static_cast<A>(v[j * stride]) - c0, A(1)};
      right.push(lam, static_cast<A>(k[j * stride]), x);
    }
  }
}

// Backward carries: x = (dy, dy y'), log-weight -lse.
template <typename A, typename T>
BIWKV_HD void bwd_chunk_carry(const A* yc, const A* lse, const T* gy, int64_t stride, int len, A lam,
                              BwdSum<A>& left, BwdSum<A>& right) {
  left = BwdSum<A>::empty();
  right = BwdSum<A>::empty();
BIWKV_UNROLL
  for (int j = 0; j < kChunk; ++j) {
    if (j < len) {
      const A g = static_cast<A>(gy[j * stride]);
      const A x[2] = {g, g * yc[j * stride]};
      left.push(lam, -lse[j * stride], x);
    }
  }
  planted_bug(left);
BIWKV_UNROLL
  for (int j = kChunk - 1; j >= 0; --j) {
    if (j < len) {
      const A g = static_cast<A>(gy[j * stride]);
      const A x[2] = {g, g * yc[j * stride]};
      right.push(lam, -lse[j * stride], x);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Phase 2, per lane: Kogge-Stone step (mine absorbs `lower`, the inclusive sum `off` chunks back),
// the exclusive state of lane `lane` (from the inclusive sum of lane - 1 and the run state entering
// the group of 32 chunks) and the run state after the group (from the inclusive sum of lane 31).
template <typename S, typename A>
BIWKV_HD S scan_combine(const S& mine, const S& lower, int off, A lam) {
  return add(mine, lower.shifted(A(off) * A(kChunk)), lam);
}
template <typename S, typename A>
BIWKV_HD S scan_exclusive(int lane, const S& prev_inclusive, const S& run, A lam) {
  const S moved = run.shifted(A(lane) * A(kChunk));
  return lane > 0 ? add(prev_inclusive, moved, lam) : moved;
}
template <typename S, typename A>
BIWKV_HD S scan_next_run(const S& last_inclusive, const S& run, A lam) {
  return add(last_inclusive, run.shifted(A(kWarp) * A(kChunk)), lam);
}

// ---------------------------------------------------------------------------------------------
// Phase 3, forward: y = y' + c0 (in the input dtype), y' and lse (accumulation dtype) per token, each
// written when its pointer is not null; outputs are `ostride` apart (inputs `stride`).
// left: the state arriving at the chunk's first token; right: at its last token.
template <typename A, typename T, typename Y>
BIWKV_HD void fwd_chunk_output(const T* k, const T* v, int64_t stride, int len, A lam, A u, A c0,
                               FwdSum<A> left, FwdSum<A> right, T* y, Y* yc, A* lse, int64_t ostride) {
  typename FwdSum<A>::Frozen rs[kChunk];
BIWKV_UNROLL
  for (int j = kChunk - 1; j >= 0; --j) {
    if (j < len) {
      rs[j] = right.frozen(lam);
      const A x[2] = {static_cast<A>(v[j * stride]) - c0, A(1)};
      right.push(lam, static_cast<A>(k[j * stride]), x);
    }
  }
BIWKV_UNROLL
  for (int j = 0; j < kChunk; ++j) {
    if (j < len) {
      const A q = static_cast<A>(k[j * stride]);
      const A vv = static_cast<A>(v[j * stride]) - c0;
      const A self = u + q;
      const typename FwdSum<A>::Frozen l = left.frozen(lam);
      const A mx = amax(amax(l.a, rs[j].a), self);
      const A es = ex(self - mx);
      const A num = l.value(0, -mx) + rs[j].value(0, -mx) + es * vv;
      const A den = l.value(1, -mx) + rs[j].value(1, -mx) + es;
      const A out = num / den;
      if (y) y[j * ostride] = static_cast<T>(out + c0);
      if (yc) yc[j * ostride] = static_cast<Y>(out);
      if (lse) lse[j * ostride] = mx + lg(den);
      const A x[2] = {vv, A(1)};
      left.push(lam, q, x);
    }
  }
}

// Phase 3, backward: dk, dv per token, this chunk's parts of du and dw. The chunk is done in kBwdParts
// parts of kPart tokens, so that only kPart right sums are held at a time (registers): for each part, the
// right sum is brought from the chunk's last token to the part's last one, then kept per token. gk, gv are
// `ostride` apart (the inputs `stride`).
constexpr int kBwdParts = 2;
constexpr int kPart = kChunk / kBwdParts;
static_assert(kChunk % kBwdParts == 0, "kChunk must be a multiple of kBwdParts");

template <typename A, typename T>
BIWKV_HD void bwd_chunk_output(const T* k, const T* v, const A* yc, const A* lse, const T* gy, int64_t stride,
                               int len, A lam, A u, A c0, BwdSum<A> left, BwdSum<A> right, T* gk, T* gv,
                               int64_t ostride, A& du, A& dw) {
  du = 0;
  dw = 0;
BIWKV_UNROLL
  for (int part = 0; part < kBwdParts; ++part) {
    const int j0 = part * kPart;
    typename BwdSum<A>::Frozen rs[kPart];
    BwdSum<A> r = right;
BIWKV_UNROLL
    for (int j = kChunk - 1; j >= j0; --j) {
      if (j < len) {
        if (j < j0 + kPart) rs[j - j0] = r.frozen(lam);
        const A g = static_cast<A>(gy[j * stride]);
        const A x[2] = {g, g * yc[j * stride]};
        r.push(lam, -lse[j * stride], x);
      }
    }
BIWKV_UNROLL
    for (int j = j0; j < j0 + kPart; ++j) {
      if (j < len) {
        const A q = static_cast<A>(k[j * stride]);
        const A vv = static_cast<A>(v[j * stride]) - c0;
        const A yy = yc[j * stride];
        const A g = static_cast<A>(gy[j * stride]);
        const A ls = lse[j * stride];
        const A es = ex(u + q - ls);  // eu e_i g_i / dy_i
        const typename BwdSum<A>::Frozen l = left.frozen(lam);
        const typename BwdSum<A>::Frozen& rj = rs[j - j0];
        const A dv = l.value(0, q) + rj.value(0, q) + es * g;
        const A dk = vv * dv - (l.value(1, q) + rj.value(1, q) + es * g * yy);
        gv[j * ostride] = static_cast<T>(dv);
        gk[j * ostride] = static_cast<T>(dk);
        du += es * g * (vv - yy);
        dw -= vv * (l.dist(0, q) + rj.dist(0, q)) - (l.dist(1, q) + rj.dist(1, q));
        const A x[2] = {g, g * yy};
        left.push(lam, -ls, x);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: the warp scan emulated lane by lane, and whole-channel drivers that run phases 1-3 as
// the GPU grid does (used by the CPU kernel for extreme ranges and by the tests).
#ifndef __CUDA_ARCH__
// carry/state: chunk n's two sums (left, right) at p + n * step, S::kSlots values each; S is the scan's
// (float64) type. As the kernels: per tile, one warp's Kogge-Stone over its lanes (lane_chunk), then the
// state chained over the tiles (tile_at); chunks past the end are empty sums.
template <typename S, typename A>
inline void host_scan(const A* carry, A* state, int64_t N, int64_t step, double lam) {
  const int64_t n_tiles = (N + kWarp - 1) / kWarp;
  for (int dir = 0; dir < 2; ++dir) {
    S run = S::empty();
    for (int64_t q = 0; q < n_tiles; ++q) {
      const int64_t tile = tile_at(q, n_tiles, dir);
      S x[kWarp], prev[kWarp];
      for (int lane = 0; lane < kWarp; ++lane) {
        const int64_t n = lane_chunk(tile, lane, dir);
        x[lane] = n < N ? S::load(carry + n * step + dir * S::kSlots) : S::empty();
      }
      for (int off = 1; off < kWarp; off *= 2) {
        for (int lane = 0; lane < kWarp; ++lane) prev[lane] = x[lane];
        for (int lane = off; lane < kWarp; ++lane) x[lane] = scan_combine(prev[lane], prev[lane - off], off, lam);
      }
      for (int lane = 0; lane < kWarp; ++lane) {
        const int64_t n = lane_chunk(tile, lane, dir);
        const S e = scan_exclusive(lane, x[lane > 0 ? lane - 1 : 0], run, lam);
        if (n < N) e.store(state + n * step + dir * S::kSlots, lam);
      }
      run = scan_next_run(x[kWarp - 1], run, lam);
    }
  }
}

// One (b, c): pointers at token 0, tokens `stride` apart.
template <typename A, typename T, typename Y>
inline void host_forward(const T* k, const T* v, int64_t Tn, int64_t stride, A w, A u, A c0, T* y, Y* yc, A* lse) {
  using S = FwdSum<A>;
  const int64_t N = (Tn + kChunk - 1) / kChunk, step = 2 * S::kSlots;
  const A lam = -w;
  std::vector<A> carry(N * step), state(N * step);
  for (int64_t n = 0; n < N; ++n) {
    const int len = static_cast<int>(Tn - n * kChunk < kChunk ? Tn - n * kChunk : kChunk);
    const int64_t o = n * kChunk * stride;
    S l, r;
    fwd_chunk_carry<A>(k + o, v + o, stride, len, lam, c0, l, r);
    l.store(&carry[n * step], lam);
    r.store(&carry[n * step + S::kSlots], lam);
  }
  host_scan<typename ScanOf<S>::type>(carry.data(), state.data(), N, step, static_cast<double>(lam));
  for (int64_t n = 0; n < N; ++n) {
    const int len = static_cast<int>(Tn - n * kChunk < kChunk ? Tn - n * kChunk : kChunk);
    const int64_t o = n * kChunk * stride;
    fwd_chunk_output<A>(k + o, v + o, stride, len, lam, u, c0, S::load(&state[n * step]),
                        S::load(&state[n * step + S::kSlots]), y + o, yc + o, lse + o, stride);
  }
}

// One (b, c); du and dw accumulate (in double) over the chunks.
template <typename A, typename T>
inline void host_backward(const T* k, const T* v, const A* yc, const A* lse, const T* gy, int64_t Tn, int64_t stride,
                          A w, A u, A c0, T* gk, T* gv, double& du, double& dw) {
  using S = BwdSum<A>;
  const int64_t N = (Tn + kChunk - 1) / kChunk, step = 2 * S::kSlots;
  const A lam = -w;
  std::vector<A> carry(N * step), state(N * step);
  for (int64_t n = 0; n < N; ++n) {
    const int len = static_cast<int>(Tn - n * kChunk < kChunk ? Tn - n * kChunk : kChunk);
    const int64_t o = n * kChunk * stride;
    S l, r;
    bwd_chunk_carry<A>(yc + o, lse + o, gy + o, stride, len, lam, l, r);
    l.store(&carry[n * step], lam);
    r.store(&carry[n * step + S::kSlots], lam);
  }
  host_scan<typename ScanOf<S>::type>(carry.data(), state.data(), N, step, static_cast<double>(lam));
  for (int64_t n = 0; n < N; ++n) {
    const int len = static_cast<int>(Tn - n * kChunk < kChunk ? Tn - n * kChunk : kChunk);
    const int64_t o = n * kChunk * stride;
    A pu, pw;
    bwd_chunk_output<A>(k + o, v + o, yc + o, lse + o, gy + o, stride, len, lam, u, c0, S::load(&state[n * step]),
                        S::load(&state[n * step + S::kSlots]), gk + o, gv + o, stride, pu, pw);
    du += static_cast<double>(pu);
    dw += static_cast<double>(pw);
  }
}
#endif  // __CUDA_ARCH__

}  // namespace biwkv
