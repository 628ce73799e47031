// Bi-WKV CPU kernel: O(T) forward and backward, float32 / float64 inputs, float64 accumulation.
//
// Definition (docs/DESIGN.md section 2), per batch row b and channel c:
//   num_t = sum_{i != t} exp(-(|t-i|-1) w + k_i) v_i + exp(u + k_t) v_t,  den_t likewise with v = 1,
//   y_t = num_t / den_t.
// With e_i = exp(k_i - kmax) (kmax = max_t k_t of the channel; it cancels in num / den) and
// ew = exp(-w) the left and right sums are first-order recurrences:
//   A_{t+1} = ew * A_t + e_t v_t  (left),   B_{t-1} = ew * B_t + e_t v_t  (right).
// The backward pass uses, with g_t = dy_t / den_t:
//   dv_i = e_i (P_i + e^u g_i),  dk_i = v_i dv_i - e_i (Q_i + e^u g_i y_i),
//   P_i = sum_{t != i} exp(-(|t-i|-1) w) g_t,  Q_i likewise with g_t y_t,
//   du  = sum_t e^u e_t g_t (v_t - y_t),
//   dw  = -sum_t g_t (DA_t - y_t DA'_t + DB_t - y_t DB'_t),  DA_{t+1} = ew (DA_t + A_t),
// where DA (DB) are the distance-weighted left (right) sums.
//
// Work is split into tiles of kLanes channels; a task is a group of tiles of one batch row. A tile's
// channels at one time step are a 64-byte run of k (float32) and each of its recurrences is one
// float64 vector held in registers. Time is cut into blocks of kL steps and is the outer loop, so
// the rows of a block stay in cache while every tile of the group walks them. A first pass keeps
// the right-hand sums only at block boundaries; the pass that needs them per step rebuilds one
// block at a time from its boundary into small buffers. The forward hands its right key sums at
// the boundaries to the backward ([B, nb, C] float64), which then skips its own first pass (one
// exponential per element less). Nothing of size T * C is allocated besides
// the outputs. Channels beyond the last full tile are copied into a zero-padded tile. Every
// exponential is <= 1 thanks to the kmax scaling, and a tile's sums fit float64 whenever
//   S = (T - 1) * max(0, -w) + (kmax - kmin) + |u| <= kSafe
// holds for each of its channels (always true for the network, where w = decay / T). The channels of
// a task whose tiles fail the test are computed by the log-scaled math of bi_wkv_math.cuh (the CUDA
// kernels' math, run on the host in float64): exact for any finite w, u, k, and never a fallback.
//
// Values are centred, v' = v - c0 with c0 = biwkv::centre (as in bi_wkv_math.cuh): the forward
// also returns y' = y - c0, and the backward, which uses only v' and y', loses no digits to a large
// common offset in v.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "bi_wkv_math.cuh"

namespace {

// Kernels are force-inlined into small per-dtype entry points that GCC compiles more than once on
// x86-64: AVX-512 and AVX2/FMA clones picked at load time from the CPU's features (x86-64-v4 /
// v3 levels, so AMD and Intel CPUs alike; "arch=haswell" would test for that CPU model and never
// pick the clone on AMD), and a baseline clone.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
#define MEDURWKV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MEDURWKV_CLONES
#endif
#define MEDURWKV_INLINE inline __attribute__((always_inline))

constexpr int kLanes = 16;       // channels per tile
constexpr int64_t kL = 64;       // time steps per block
constexpr double kSafe = 600.0;  // exp(600) * T stays far below the float64 maximum

// One float64 value per channel of a tile (GCC vector extension: the compiler maps it onto the
// widest registers of each clone).
typedef double vec __attribute__((vector_size(kLanes * sizeof(double))));
typedef std::int64_t ivec __attribute__((vector_size(kLanes * sizeof(std::int64_t))));
typedef float fvec __attribute__((vector_size(kLanes * sizeof(float))));

MEDURWKV_INLINE vec splat(double x) { return vec{} + x; }

MEDURWKV_INLINE vec load(const double* p) {
  vec r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
MEDURWKV_INLINE vec load(const float* p) {
  fvec r;
  std::memcpy(&r, p, sizeof(r));
  return __builtin_convertvector(r, vec);
}
MEDURWKV_INLINE void store(double* p, vec x) { std::memcpy(p, &x, sizeof(x)); }
MEDURWKV_INLINE void store(float* p, vec x) {
  const fvec r = __builtin_convertvector(x, fvec);
  std::memcpy(p, &r, sizeof(r));
}

// 1 / i! for i = 0..13
constexpr double kInvFactorial[14] = {1.0,
                                      1.0,
                                      1.0 / 2,
                                      1.0 / 6,
                                      1.0 / 24,
                                      1.0 / 120,
                                      1.0 / 720,
                                      1.0 / 5040,
                                      1.0 / 40320,
                                      1.0 / 362880,
                                      1.0 / 3628800,
                                      1.0 / 39916800,
                                      1.0 / 479001600,
                                      1.0 / 6227020800.0};

// exp(x) for -708 <= x <= 0 (callers guarantee x >= -kSafe), lane-wise and branch-free.
// kDeg terms of the Taylor series on |r| <= ln2 / 2: 7 gives ~5e-9 relative (float32 inputs),
// 13 gives ~1e-16 (float64 inputs).
template <int kDeg>
MEDURWKV_INLINE vec exp_nonpos(vec x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 0.6931471803691238;
  constexpr double kLn2Lo = 1.9082149292705877e-10;
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  constexpr double kTwo52 = 4503599627370496.0;   // 2^52: m + 2^52 holds the integer m in its low bits
  const vec n = (x * kLog2e + kShift) - kShift;    // round(x / ln2), in [-1022, 0]
  const vec r = (x - n * kLn2Hi) - n * kLn2Lo;
  vec p = splat(kInvFactorial[kDeg]);  // Horner: sum_i r^i / i!
#pragma GCC unroll 16
  for (int i = kDeg - 1; i >= 0; --i) p = p * r + kInvFactorial[i];
  const vec m = n + (1023.0 + kTwo52);  // biased exponent n + 1023 in the low mantissa bits
  ivec bits;
  std::memcpy(&bits, &m, sizeof(bits));
  bits <<= 52;  // move it to the exponent field: 2^n
  vec scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename scalar_t>
struct ExpDeg {
  static constexpr int value = 13;
};
template <>
struct ExpDeg<float> {
  static constexpr int value = 7;
};

MEDURWKV_INLINE int64_t num_blocks(int64_t T) { return (T + kL - 1) / kL; }

// A group of n tiles (kLanes channels each) of one batch row: channels [0, n * kLanes) from the
// pointers it is given; k, v, y (gy, gk, gv) hold step t at offset t * C.
struct Group {
  int64_t T, C, n;
  vec* kmax;  // [n] max_t k (the scale; cancels in num / den)
  vec* ew;    // [n] exp(-w)
  vec* eu;    // [n] exp(u)
  vec* c0;    // [n] centring value (biwkv::centre)
};

// Channel maxima / minima of k and the float64-range test over the first `valid` channels.
template <typename scalar_t>
MEDURWKV_INLINE bool prepare(const scalar_t* __restrict k, const double* w, const double* u, int64_t valid,
                             const Group& gr, vec* __restrict kmin) {
  for (int64_t i = 0; i < gr.n; ++i) gr.kmax[i] = kmin[i] = load(k + i * kLanes);
  for (int64_t t = 1; t < gr.T; ++t) {
    for (int64_t i = 0; i < gr.n; ++i) {
      const vec x = load(k + t * gr.C + i * kLanes);
      gr.kmax[i] = x > gr.kmax[i] ? x : gr.kmax[i];
      kmin[i] = x < kmin[i] ? x : kmin[i];
    }
  }
  bool ok = true;
  for (int64_t c = 0; c < gr.n * kLanes; ++c) {
    const int64_t i = c / kLanes, l = c % kLanes;
    const double wl = c < valid ? w[c] : 0.0, ul = c < valid ? u[c] : 0.0;
    const double grow = wl < 0 ? -wl * static_cast<double>(gr.T - 1) : 0.0;
    const double mx = gr.kmax[i][l], mn = kmin[i][l];
    const double s = grow + (mx - mn) + std::fabs(ul);
    if (c < valid && (!(s <= kSafe) || !std::isfinite(mx) || !std::isfinite(mn))) ok = false;
    gr.ew[i][l] = std::exp(-wl);
    gr.eu[i][l] = std::exp(ul);
  }
  return ok;
}

// Time is the outer loop (blocks of kL steps, so the rows of a block stay in cache while every
// tile of the group walks them); a tile's recurrences live in registers within a block and in
// the state arrays between blocks.
// Scratch: bnd [num_blocks(T)][n][2] (right sums at every block's last step), st [n][4],
// blk [3 * kL].
template <typename scalar_t>
MEDURWKV_INLINE void forward_group(const scalar_t* __restrict k, const scalar_t* __restrict v,
                                   scalar_t* __restrict y, scalar_t* __restrict yc, const Group& gr, vec* __restrict bnd,
                                   vec* __restrict st, vec* __restrict blk) {
  constexpr int kDeg = ExpDeg<scalar_t>::value;
  const int64_t T = gr.T, C = gr.C, n = gr.n, nb = num_blocks(T);
  vec* __restrict eb = blk;  // the block's e_t and right sums (numerator, denominator)
  vec* __restrict rnb = blk + kL;
  vec* __restrict rdb = blk + 2 * kL;
  // Pass 1 (right to left): right sums at the last step of every block.
  for (int64_t i = 0; i < 2 * n; ++i) st[i] = splat(0.0);
  for (int64_t b = nb - 1; b >= 0; --b) {
    const int64_t t0 = b * kL, t1 = std::min(T, t0 + kL);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* __restrict ki = k + i * kLanes;
      const scalar_t* __restrict vi = v + i * kLanes;
      const vec kmax = gr.kmax[i], ew = gr.ew[i], c0 = gr.c0[i];
      vec sn = st[2 * i], sd = st[2 * i + 1];
      bnd[2 * (b * n + i)] = sn;
      bnd[2 * (b * n + i) + 1] = sd;
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const vec e = exp_nonpos<kDeg>(load(ki + t * C) - kmax);
        sn = ew * sn + e * (load(vi + t * C) - c0);
        sd = ew * sd + e;
      }
      st[2 * i] = sn;
      st[2 * i + 1] = sd;
    }
  }
  // Pass 2 (left to right, block by block): the block's right sums, then the output.
  for (int64_t i = 0; i < 2 * n; ++i) st[i] = splat(0.0);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t t0 = b * kL, t1 = std::min(T, t0 + kL);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* __restrict ki = k + i * kLanes;
      const scalar_t* __restrict vi = v + i * kLanes;
      scalar_t* __restrict yi = y + i * kLanes;
      scalar_t* __restrict yci = yc + i * kLanes;
      const vec kmax = gr.kmax[i], ew = gr.ew[i], eu = gr.eu[i], c0 = gr.c0[i];
      vec rn = bnd[2 * (b * n + i)], rd = bnd[2 * (b * n + i) + 1];
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const vec e = exp_nonpos<kDeg>(load(ki + t * C) - kmax);
        eb[t - t0] = e;
        rnb[t - t0] = rn;
        rdb[t - t0] = rd;
        rn = ew * rn + e * (load(vi + t * C) - c0);
        rd = ew * rd + e;
      }
      vec sn = st[2 * i], sd = st[2 * i + 1];
      for (int64_t t = t0; t < t1; ++t) {
        const vec e = eb[t - t0], vv = load(vi + t * C) - c0, s = eu * e;
        const vec out = (sn + rnb[t - t0] + s * vv) / (sd + rdb[t - t0] + s);
        store(yi + t * C, out + c0);
        store(yci + t * C, out);
        sn = ew * sn + e * vv;
        sd = ew * sd + e;
      }
      st[2 * i] = sn;
      st[2 * i + 1] = sd;
    }
  }
}

// The running sums of one direction in the backward pass: value and key sums (sn, sd), their
// distance-weighted versions (dn, dd) and the scans of g and g * y (p, q); see the header.
struct Scans {
  vec sn, sd, dn, dd, p, q;
};

// Moves the sums one step on, past a step with key weight e, value vv, g and output yy.
MEDURWKV_INLINE void advance(Scans& s, vec ew, vec e, vec vv, vec g, vec yy) {
  s.dn = ew * (s.dn + s.sn);
  s.dd = ew * (s.dd + s.sd);
  s.sn = ew * s.sn + e * vv;
  s.sd = ew * s.sd + e;
  s.p = ew * s.p + g;
  s.q = ew * s.q + g * yy;
}

// Rebuilds e_t of one block and, from the boundary value x, the key sums of one direction
// (right to left when kReverse): db[t - t0] is the sum over the steps beyond t.
template <bool kReverse, int kDeg, typename scalar_t>
MEDURWKV_INLINE void rebuild_block(const scalar_t* __restrict ki, int64_t C, int64_t t0, int64_t t1, vec kmax,
                                   vec ew, vec x, vec* __restrict eb, vec* __restrict db) {
  for (int64_t j = 0; j < t1 - t0; ++j) {
    const int64_t t = kReverse ? t1 - 1 - j : t0 + j;
    const vec e = exp_nonpos<kDeg>(load(ki + t * C) - kmax);
    eb[t - t0] = e;
    db[t - t0] = x;
    x = ew * x + e;
  }
}

// State of one tile between blocks: the scans of the current direction, dw and du.
struct BackwardState {
  Scans s;
  vec dw, du;
};
static_assert(sizeof(BackwardState) == 8 * sizeof(vec), "BackwardState is laid out in scratch as 8 vec");

// Scratch: bnd [num_blocks(T)][n][4] (the right key sum after pass 1; the left key sum and left
// scans of g and g * y at every block's first step after pass 2), st [n], blk [5 * kL].
// gw and gu: [n].
template <typename scalar_t>
MEDURWKV_INLINE void backward_group(const scalar_t* __restrict k, const scalar_t* __restrict v,
                                    const scalar_t* __restrict y, const scalar_t* __restrict gy,  // y: centred
                                    scalar_t* __restrict gk, scalar_t* __restrict gv, vec* __restrict gw,
                                    vec* __restrict gu, const Group& gr, vec* __restrict bnd,
                                    BackwardState* __restrict st, vec* __restrict blk, bool have_bounds) {
  constexpr int kDeg = ExpDeg<scalar_t>::value;
  const int64_t T = gr.T, C = gr.C, n = gr.n, nb = num_blocks(T);
  vec* __restrict eb = blk;           // e_t
  vec* __restrict db = blk + kL;      // the other direction's key sums
  vec* __restrict gb = blk + 2 * kL;  // g_t
  vec* __restrict pb = blk + 3 * kL;  // right scans of g and g * y
  vec* __restrict qb = blk + 4 * kL;
  const vec zero = splat(0.0);
  const Scans none{zero, zero, zero, zero, zero, zero};
  // Pass 1 (right to left): right key sums at the last step of every block (unless the forward's are in
  // bnd already: the same sums, computed the same way).
  for (int64_t i = 0; i < n; ++i) st[i].s.sd = zero;
  for (int64_t b = have_bounds ? -1 : nb - 1; b >= 0; --b) {
    const int64_t t0 = b * kL, t1 = std::min(T, t0 + kL);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* __restrict ki = k + i * kLanes;
      const vec kmax = gr.kmax[i], ew = gr.ew[i];
      vec sd = st[i].s.sd;
      bnd[4 * (b * n + i)] = sd;
      for (int64_t t = t1 - 1; t >= t0; --t) sd = ew * sd + exp_nonpos<kDeg>(load(ki + t * C) - kmax);
      st[i].s.sd = sd;
    }
  }
  // Pass 2 (left to right): den_t, g_t, left part of dw; left states at every block start.
  for (int64_t i = 0; i < n; ++i) st[i] = BackwardState{none, zero, zero};
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t t0 = b * kL, t1 = std::min(T, t0 + kL);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t o = i * kLanes;
      const vec kmax = gr.kmax[i], ew = gr.ew[i], eu = gr.eu[i], c0 = gr.c0[i];
      Scans left = st[i].s;
      vec dw = st[i].dw;
      vec* __restrict bn = bnd + 4 * (b * n + i);
      bn[1] = left.sd;
      bn[2] = left.p;
      bn[3] = left.q;
      rebuild_block<true, kDeg>(k + o, C, t0, t1, kmax, ew, bn[0], eb, db);
      for (int64_t t = t0; t < t1; ++t) {
        const vec e = eb[t - t0], vv = load(v + o + t * C) - c0, yy = load(y + o + t * C);
        const vec g = load(gy + o + t * C) / (left.sd + db[t - t0] + eu * e);
        dw += g * (left.dn - yy * left.dd);
        advance(left, ew, e, vv, g, yy);
      }
      st[i].s = left;
      st[i].dw = dw;
    }
  }
  // Pass 3 (right to left, block by block): the block's left key sums, then den_t, g_t, the right
  // part of dw, du and the right scans, then dk and dv with the block's left scans.
  for (int64_t i = 0; i < n; ++i) st[i].s = none;
  for (int64_t b = nb - 1; b >= 0; --b) {
    const int64_t t0 = b * kL, t1 = std::min(T, t0 + kL);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t o = i * kLanes;
      const vec kmax = gr.kmax[i], ew = gr.ew[i], eu = gr.eu[i], c0 = gr.c0[i];
      const vec* __restrict bn = bnd + 4 * (b * n + i);
      rebuild_block<false, kDeg>(k + o, C, t0, t1, kmax, ew, bn[1], eb, db);
      Scans right = st[i].s;
      vec dw = st[i].dw, du = st[i].du;
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const vec e = eb[t - t0], vv = load(v + o + t * C) - c0, yy = load(y + o + t * C);
        const vec g = load(gy + o + t * C) / (db[t - t0] + right.sd + eu * e);
        gb[t - t0] = g;
        pb[t - t0] = right.p;
        qb[t - t0] = right.q;
        dw += g * (right.dn - yy * right.dd);
        du += eu * g * e * (vv - yy);
        advance(right, ew, e, vv, g, yy);
      }
      st[i] = BackwardState{right, dw, du};
      vec lp = bn[2], lq = bn[3];  // the block's left scans of g and g * y
      for (int64_t t = t0; t < t1; ++t) {
        const vec e = eb[t - t0], vv = load(v + o + t * C) - c0, yy = load(y + o + t * C), g = gb[t - t0];
        const vec eug = eu * g;
        const vec dv = e * (lp + pb[t - t0] + eug);
        store(gv + o + t * C, dv);
        store(gk + o + t * C, vv * dv - e * (lq + qb[t - t0] + eug * yy));
        lp = ew * lp + g;
        lq = ew * lq + g * yy;
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    gw[i] = -st[i].dw;
    gu[i] = st[i].du;
  }
}

// Channels whose range the float64 kmax scaling cannot hold: the log-scaled math of bi_wkv_math.cuh,
// one channel at a time (copied to contiguous float64 buffers).
template <typename T_>
void wide_forward(const T_* k, const T_* v, T_* y, T_* yc, const double* w, const double* u, const double* c0,
                  int64_t valid, int64_t T, int64_t C) {
  std::vector<double> kk(T), vv(T), yy(T), ycc(T), lse(T);
  for (int64_t c = 0; c < valid; ++c) {
    for (int64_t t = 0; t < T; ++t) {
      kk[t] = static_cast<double>(k[t * C + c]);
      vv[t] = static_cast<double>(v[t * C + c]);
    }
    biwkv::host_forward<double>(kk.data(), vv.data(), T, 1, w[c], u[c], c0[c], yy.data(), ycc.data(), lse.data());
    for (int64_t t = 0; t < T; ++t) {
      y[t * C + c] = static_cast<T_>(yy[t]);
      yc[t * C + c] = static_cast<T_>(ycc[t]);
    }
  }
}

template <typename T_>
void wide_backward(const T_* k, const T_* v, const T_* gy, T_* gk, T_* gv, double* gw, double* gu, const double* w,
                   const double* u, const double* c0, int64_t valid, int64_t T, int64_t C) {
  std::vector<double> kk(T), vv(T), gyy(T), yy(T), ycc(T), lse(T), gkk(T), gvv(T);
  for (int64_t c = 0; c < valid; ++c) {
    for (int64_t t = 0; t < T; ++t) {
      kk[t] = static_cast<double>(k[t * C + c]);
      vv[t] = static_cast<double>(v[t * C + c]);
      gyy[t] = static_cast<double>(gy[t * C + c]);
    }
    // y' and lse again (this path does not store lse; the values equal the forward's)
    biwkv::host_forward<double>(kk.data(), vv.data(), T, 1, w[c], u[c], c0[c], yy.data(), ycc.data(), lse.data());
    double du = 0.0, dw = 0.0;
    biwkv::host_backward<double>(kk.data(), vv.data(), ycc.data(), lse.data(), gyy.data(), T, 1, w[c], u[c], c0[c],
                                 gkk.data(), gvv.data(), du, dw);
    for (int64_t t = 0; t < T; ++t) {
      gk[t * C + c] = static_cast<T_>(gkk[t]);
      gv[t * C + c] = static_cast<T_>(gvv[t]);
    }
    gw[c] = dw;
    gu[c] = du;
  }
}

// Per-dtype entry points (compiled once per clone); only pointers and scalars cross them.
// scratch: vec_scratch(scratch_size(...)); valid: real channels (the rest is zero padding).
// Return false when the tiles need the wide-range path (the caller then runs it).
#define MEDURWKV_ENTRY(T_)                                                                        \
  MEDURWKV_CLONES bool run_forward(const T_* k, const T_* v, T_* y, T_* yc, double* bounds,       \
                                   int64_t bstride, const double* w, const double* u,            \
                                   const double* c0, int64_t valid, int64_t T, int64_t C,        \
                                   int64_t n, void* scratch) {                                    \
    vec* sc = static_cast<vec*>(scratch);                                                          \
    const Group gr{T, C, n, sc, sc + n, sc + 2 * n, sc + 3 * n};                                   \
    for (int64_t i = 0; i < n; ++i) gr.c0[i] = load(c0 + i * kLanes);                              \
    if (!prepare<T_>(k, w, u, valid, gr, sc + 4 * n)) return false;                               \
    vec* bnd = sc + 8 * n + 5 * kL;                                                                \
    forward_group<T_>(k, v, y, yc, gr, bnd, sc + 4 * n, sc + 8 * n);                               \
    for (int64_t b = 0; b < num_blocks(T); ++b)                                                    \
      for (int64_t c = 0; c < valid; ++c)                                                          \
        bounds[b * bstride + c] = bnd[2 * (b * n + c / kLanes) + 1][c % kLanes];                   \
    return true;                                                                                   \
  }                                                                                                \
  MEDURWKV_CLONES bool run_backward(const T_* k, const T_* v, const T_* yc, const T_* gy, T_* gk,  \
                                    T_* gv, double* gw, double* gu, const double* bounds,          \
                                    int64_t bstride, const double* w, const double* u,            \
                                    const double* c0, int64_t valid, int64_t T, int64_t C,        \
                                    int64_t n, void* scratch) {                                   \
    vec* sc = static_cast<vec*>(scratch);                                                          \
    const Group gr{T, C, n, sc, sc + n, sc + 2 * n, sc + 3 * n};                                   \
    for (int64_t i = 0; i < n; ++i) gr.c0[i] = load(c0 + i * kLanes);                              \
    if (!prepare<T_>(k, w, u, valid, gr, sc + 4 * n)) return false;                               \
    vec* gwv = sc + 12 * n;                                                                        \
    vec* guv = sc + 13 * n;                                                                        \
    vec* bnd = sc + 14 * n + 5 * kL;                                                               \
    if (bounds)                                                                                    \
      for (int64_t b = 0; b < num_blocks(T); ++b)                                                  \
        for (int64_t c = 0; c < n * kLanes; ++c)                                                   \
          bnd[4 * (b * n + c / kLanes)][c % kLanes] = c < valid ? bounds[b * bstride + c] : 0.0;   \
    backward_group<T_>(k, v, yc, gy, gk, gv, gwv, guv, gr, bnd,                                    \
                       reinterpret_cast<BackwardState*>(sc + 4 * n), sc + 14 * n, bounds != nullptr); \
    for (int64_t c = 0; c < valid; ++c) {                                                          \
      gw[c] = gwv[c / kLanes][c % kLanes];                                                         \
      gu[c] = guv[c / kLanes][c % kLanes];                                                         \
    }                                                                                              \
    return true;                                                                                   \
  }
MEDURWKV_ENTRY(float)
MEDURWKV_ENTRY(double)
#undef MEDURWKV_ENTRY

// Work split: the full tiles of each batch row are cut into `groups` contiguous groups so that
// B * groups tasks keep every thread busy; the channels after the last full tile form one more,
// zero-padded tile (its own task) per batch row.
struct Tiling {
  int64_t B, T, C, full, rem;  // full tiles per row; channels in the padded tile (0: none)
  int64_t groups, per_group;   // groups of full tiles per row, tiles per group (the last may have fewer)
  int64_t per_row() const { return groups + (rem > 0 ? 1 : 0); }
  int64_t count() const { return B * per_row(); }
};

Tiling make_tiling(const torch::Tensor& k) {
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  const int64_t full = C / kLanes, rem = C % kLanes;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t groups = std::min(full, (threads + B - 1) / B);
  const int64_t per_group = groups > 0 ? (full + groups - 1) / groups : 0;
  groups = per_group > 0 ? (full + per_group - 1) / per_group : 0;
  return {B, T, C, full, rem, groups, per_group};
}

// Scratch (in vec units) of one task over n tiles; see the entry points for the layout.
int64_t scratch_size(bool backward, int64_t T, int64_t n) {
  return (backward ? 14 : 8) * n + 5 * kL + (backward ? 4 : 2) * num_blocks(T) * n;
}

// Aligned scratch of vec values (operator new[] honours the vector type's alignment).
std::unique_ptr<vec[]> vec_scratch(int64_t n) { return std::unique_ptr<vec[]>(new vec[n]); }

// A zero-padded [T, kLanes] copy of channels [c0, c0 + rem) of x[b] (rem < kLanes), and back.
template <typename scalar_t>
void pad_in(const scalar_t* x, const Tiling& tg, int64_t b, scalar_t* out) {
  const int64_t c0 = tg.full * kLanes;
  for (int64_t t = 0; t < tg.T; ++t) {
    const scalar_t* src = x + (b * tg.T + t) * tg.C + c0;
    scalar_t* dst = out + t * kLanes;
    for (int l = 0; l < kLanes; ++l) dst[l] = l < tg.rem ? src[l] : scalar_t(0);
  }
}
template <typename scalar_t>
void pad_out(const scalar_t* in, const Tiling& tg, int64_t b, scalar_t* x) {
  const int64_t c0 = tg.full * kLanes;
  for (int64_t t = 0; t < tg.T; ++t)
    std::copy(in + t * kLanes, in + t * kLanes + tg.rem, x + (b * tg.T + t) * tg.C + c0);
}

void check_args(const torch::Tensor& w, const torch::Tensor& u, const torch::Tensor& k,
                const torch::Tensor& v) {
  TORCH_CHECK(k.device().is_cpu(), "bi_wkv_cpu: k must be a CPU tensor");
  TORCH_CHECK(k.dim() == 3 && k.numel() > 0, "bi_wkv_cpu: k must be a non-empty [B, T, C] tensor");
  TORCH_CHECK(v.sizes() == k.sizes() && v.scalar_type() == k.scalar_type(),
              "bi_wkv_cpu: v must match k in shape and dtype");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "bi_wkv_cpu: k and v must be contiguous");
  TORCH_CHECK(w.dim() == 1 && u.dim() == 1 && w.size(0) == k.size(2) && u.size(0) == k.size(2),
              "bi_wkv_cpu: w and u must be [C]");
}

}  // namespace

// Returns (y, yc, bounds, c0): y and the centred output yc = y - c0 in the dtype of k, the right key sums
// at the last step of every block of kL steps ([B, ceil(T / kL), C], float64, in the op's lse slot: the
// backward starts from them instead of recomputing them), c0 = the centring value ([B, C], float64).
std::vector<torch::Tensor> bi_wkv_forward(torch::Tensor w, torch::Tensor u, torch::Tensor k, torch::Tensor v) {
  check_args(w, u, k, v);
  const Tiling tg = make_tiling(k);
  auto wd = w.to(torch::kDouble).contiguous();
  auto ud = u.to(torch::kDouble).contiguous();
  // the centring value of bi_wkv_math.cuh: the mean of v over the first chunk
  auto c0 = v.narrow(1, 0, std::min<int64_t>(k.size(1), biwkv::kChunk)).mean(1, false, torch::kDouble).contiguous();
  auto y = torch::empty_like(k);
  auto yc = torch::empty_like(k);
  const int64_t nb = num_blocks(tg.T);
  // the right key sums at every block's last step ([B, nb, C]), for the backward (it skips a pass)
  auto bounds = torch::empty({tg.B, nb, tg.C}, k.options().dtype(torch::kDouble));
  double* bp = bounds.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "bi_wkv_cpu_forward", [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* ycp = yc.data_ptr<scalar_t>();
    const double* wp = wd.data_ptr<double>();
    const double* up = ud.data_ptr<double>();
    const double* cp = c0.data_ptr<double>();
    at::parallel_for(0, tg.count(), 1, [&](int64_t begin, int64_t end) {
      auto scratch = vec_scratch(scratch_size(false, tg.T, std::max<int64_t>(1, tg.per_group)));
      std::vector<scalar_t> pad;  // k, v, y, yc of a padded tile
      double wpad[kLanes] = {}, upad[kLanes] = {}, cpad[kLanes] = {};
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tg.per_row(), g = task % tg.per_row();
        if (g < tg.groups) {
          const int64_t c0i = g * tg.per_group * kLanes;
          const int64_t n = std::min(tg.per_group, tg.full - g * tg.per_group);
          const int64_t off = b * tg.T * tg.C + c0i;
          const double* cb = cp + b * tg.C + c0i;
          if (!run_forward(kp + off, vp + off, yp + off, ycp + off, bp + b * nb * tg.C + c0i, tg.C, wp + c0i, up + c0i,
                           cb, n * kLanes, tg.T, tg.C, n, scratch.get()))
            wide_forward(kp + off, vp + off, yp + off, ycp + off, wp + c0i, up + c0i, cb, n * kLanes, tg.T, tg.C);
        } else {
          const int64_t c0i = tg.full * kLanes, n = tg.T * kLanes;
          pad.resize(static_cast<size_t>(4 * n));
          scalar_t* q = pad.data();
          pad_in(kp, tg, b, q);
          pad_in(vp, tg, b, q + n);
          std::copy(wp + c0i, wp + tg.C, wpad);
          std::copy(up + c0i, up + tg.C, upad);
          std::copy(cp + b * tg.C + c0i, cp + (b + 1) * tg.C, cpad);
          if (!run_forward(q, q + n, q + 2 * n, q + 3 * n, bp + b * nb * tg.C + c0i, tg.C, wpad, upad, cpad, tg.rem,
                           tg.T, kLanes, 1, scratch.get()))
            wide_forward(q, q + n, q + 2 * n, q + 3 * n, wpad, upad, cpad, tg.rem, tg.T, kLanes);
          pad_out(q + 2 * n, tg, b, yp);
          pad_out(q + 3 * n, tg, b, ycp);
        }
      }
    });
  });
  return {y, yc, bounds, c0};
}

// Returns (gw, gu, gk, gv); gw and gu in the dtype of w. yc, bounds (the lse slot) and c0 come from
// bi_wkv_forward; bounds of any other shape are ignored (recomputed).
std::vector<torch::Tensor> bi_wkv_backward(torch::Tensor w, torch::Tensor u, torch::Tensor k, torch::Tensor v,
                                           torch::Tensor yc, torch::Tensor lse, torch::Tensor c0, torch::Tensor gy) {
  check_args(w, u, k, v);
  TORCH_CHECK(yc.sizes() == k.sizes() && gy.sizes() == k.sizes(), "bi_wkv_cpu: yc, gy must match k");
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == k.size(0) && c0.size(1) == k.size(2), "bi_wkv_cpu: c0 must be [B, C]");
  const int64_t nb = num_blocks(k.size(1));
  const bool have_bounds = lse.scalar_type() == torch::kDouble && lse.dim() == 3 && lse.size(0) == k.size(0) &&
                           lse.size(1) == nb && lse.size(2) == k.size(2);
  if (have_bounds) lse = lse.contiguous();
  const double* bp = have_bounds ? lse.data_ptr<double>() : nullptr;
  yc = yc.to(k.scalar_type()).contiguous();
  gy = gy.to(k.scalar_type()).contiguous();
  c0 = c0.to(torch::kDouble).contiguous();
  const Tiling tg = make_tiling(k);
  auto wd = w.to(torch::kDouble).contiguous();
  auto ud = u.to(torch::kDouble).contiguous();
  auto gk = torch::empty_like(k);
  auto gv = torch::empty_like(k);
  auto gwp = torch::zeros({tg.B, tg.C}, k.options().dtype(torch::kDouble));
  auto gup = torch::zeros({tg.B, tg.C}, k.options().dtype(torch::kDouble));
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "bi_wkv_cpu_backward", [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* yp = yc.data_ptr<scalar_t>();
    const scalar_t* gyp = gy.data_ptr<scalar_t>();
    scalar_t* gkp = gk.data_ptr<scalar_t>();
    scalar_t* gvp = gv.data_ptr<scalar_t>();
    double* gwpp = gwp.data_ptr<double>();
    double* gupp = gup.data_ptr<double>();
    const double* wp = wd.data_ptr<double>();
    const double* up = ud.data_ptr<double>();
    const double* cp = c0.data_ptr<double>();
    at::parallel_for(0, tg.count(), 1, [&](int64_t begin, int64_t end) {
      auto scratch = vec_scratch(scratch_size(true, tg.T, std::max<int64_t>(1, tg.per_group)));
      std::vector<scalar_t> pad;  // k, v, yc, gy, gk, gv of a padded tile
      double wpad[kLanes] = {}, upad[kLanes] = {}, cpad[kLanes] = {};
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tg.per_row(), g = task % tg.per_row();
        if (g < tg.groups) {
          const int64_t c0i = g * tg.per_group * kLanes;
          const int64_t n = std::min(tg.per_group, tg.full - g * tg.per_group);
          const int64_t off = b * tg.T * tg.C + c0i;
          const double* cb = cp + b * tg.C + c0i;
          double* gwb = gwpp + b * tg.C + c0i;
          double* gub = gupp + b * tg.C + c0i;
          if (!run_backward(kp + off, vp + off, yp + off, gyp + off, gkp + off, gvp + off, gwb, gub,
                            bp ? bp + b * nb * tg.C + c0i : nullptr, tg.C, wp + c0i, up + c0i, cb, n * kLanes, tg.T,
                            tg.C, n, scratch.get()))
            wide_backward(kp + off, vp + off, gyp + off, gkp + off, gvp + off, gwb, gub, wp + c0i, up + c0i, cb,
                          n * kLanes, tg.T, tg.C);
        } else {
          const int64_t c0i = tg.full * kLanes, n = tg.T * kLanes;
          pad.resize(static_cast<size_t>(6 * n));
          scalar_t* q = pad.data();
          pad_in(kp, tg, b, q);
          pad_in(vp, tg, b, q + n);
          pad_in(yp, tg, b, q + 2 * n);
          pad_in(gyp, tg, b, q + 3 * n);
          std::copy(wp + c0i, wp + tg.C, wpad);
          std::copy(up + c0i, up + tg.C, upad);
          std::copy(cp + b * tg.C + c0i, cp + (b + 1) * tg.C, cpad);
          double* gwb = gwpp + b * tg.C + c0i;
          double* gub = gupp + b * tg.C + c0i;
          if (!run_backward(q, q + n, q + 2 * n, q + 3 * n, q + 4 * n, q + 5 * n, gwb, gub,
                            bp ? bp + b * nb * tg.C + c0i : nullptr, tg.C, wpad, upad, cpad, tg.rem,
                            tg.T, kLanes, 1, scratch.get()))
            wide_backward(q, q + n, q + 3 * n, q + 4 * n, q + 5 * n, gwb, gub, wpad, upad, cpad, tg.rem, tg.T, kLanes);
          pad_out(q + 4 * n, tg, b, gkp);
          pad_out(q + 5 * n, tg, b, gvp);
        }
      }
    });
  });
  auto gw = gwp.sum(0).to(w.scalar_type());
  auto gu = gup.sum(0).to(u.scalar_type());
  return {gw, gu, gk, gv};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Bi-WKV CPU kernel (medurwkv_net)";
  m.def("forward", &bi_wkv_forward, "Bi-WKV forward: (w, u, k, v) -> (y, yc, lse, c0)");
  m.def("backward", &bi_wkv_backward, "Bi-WKV backward: (w, u, k, v, yc, lse, c0, gy) -> (gw, gu, gk, gv)");
}
