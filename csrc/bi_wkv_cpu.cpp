// Bi-WKV CPU kernel: O(T) forward and backward, float32 / float64 inputs, float64 accumulation.
//
// Definition (shared/DESIGN.md section 2), per batch row b and channel c:
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
// Work is split into tasks of (batch row, range of channels); the channel range is the inner,
// contiguous, vectorised loop, and each pass walks memory sequentially. All partial sums stay in float64 and the scaling by kmax keeps
// every exponential <= 1; a task's values then fit float64 whenever
//   S = (T - 1) * max(0, -w) + (kmax - kmin) + |u| <= kSafe
// holds for each of its channels (always true for the network, where w = decay / T). Tasks that
// fail the test are reported through the returned flag and the caller uses its log-scaled fallback.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

namespace {

// Kernels are force-inlined into small per-dtype entry points that GCC compiles twice on x86-64
// (an AVX2/FMA clone picked at load time when the CPU has it, and a baseline clone).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MEDURWKV_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define MEDURWKV_CLONES
#endif
#define MEDURWKV_INLINE inline __attribute__((always_inline))

constexpr int64_t kW = 16;       // granularity of the channel split
constexpr double kSafe = 600.0;  // exp(600) * T stays far below the float64 maximum

// exp(x) for -708 <= x <= 0 (callers guarantee x >= -kSafe), branch-free so that loops over
// channels vectorise.
// kDeg terms of the Taylor series on |r| <= ln2 / 2: 7 gives ~5e-9 relative (float32 inputs),
// 13 gives ~1e-16 (float64 inputs).
template <int kDeg>
MEDURWKV_INLINE double exp_nonpos(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 0.6931471803691238;
  constexpr double kLn2Lo = 1.9082149292705877e-10;
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  constexpr double kTwo52 = 4503599627370496.0;   // 2^52: m + 2^52 holds the integer m in its low bits
  const double n = (x * kLog2e + kShift) - kShift;  // round(x / ln2), in [-1022, 0]
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0;
#pragma GCC unroll 16
  for (int i = kDeg; i >= 1; --i) p = 1.0 + p * r * (1.0 / static_cast<double>(i));
  const double m = n + (1023.0 + kTwo52);  // biased exponent n + 1023 in the low mantissa bits
  std::uint64_t bits;
  std::memcpy(&bits, &m, sizeof(bits));
  bits <<= 52;  // move it to the exponent field: 2^n
  double scale;
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

// One task: batch row b, channels [c0, c0 + cw). Whole rows of channels are processed per time
// step, so every pass walks k, v, y and the scratch buffers sequentially in memory.
struct Task {
  int64_t T, C;  // sequence length and row stride of k, v, y
  int64_t cw;    // channels in this task
  double* kmax;  // [cw] max_t k (the scale; cancels in num / den)
  double* ew;    // [cw] exp(-w)
  double* eu;    // [cw] exp(u)
};

// Pass 0: per-channel max / min of k and the float64-range test. Returns false if it fails.
template <typename scalar_t>
MEDURWKV_INLINE bool prepare(const scalar_t* __restrict k, const double* w, const double* u, Task& tk,
             double* __restrict kmin) {
  const int64_t cw = tk.cw;
  double* __restrict kmax = tk.kmax;
  for (int64_t j = 0; j < cw; ++j) {
    kmax[j] = -std::numeric_limits<double>::infinity();
    kmin[j] = std::numeric_limits<double>::infinity();
  }
  for (int64_t t = 0; t < tk.T; ++t) {
    const scalar_t* __restrict kt = k + t * tk.C;
    for (int64_t j = 0; j < cw; ++j) {
      const double x = static_cast<double>(kt[j]);
      kmax[j] = x > kmax[j] ? x : kmax[j];
      kmin[j] = x < kmin[j] ? x : kmin[j];
    }
  }
  bool ok = true;
  for (int64_t j = 0; j < cw; ++j) {
    const double grow = w[j] < 0 ? -w[j] * static_cast<double>(tk.T - 1) : 0.0;
    const double s = grow + (kmax[j] - kmin[j]) + std::fabs(u[j]);
    if (!(s <= kSafe) || !std::isfinite(kmax[j]) || !std::isfinite(kmin[j])) ok = false;
    tk.ew[j] = std::exp(-w[j]);
    tk.eu[j] = std::exp(u[j]);
  }
  return ok;
}

// Scratch (scalar_t, [T][cw] each): e_t, right denominator sums. The right numerator sums are
// parked in y until the left-to-right pass overwrites them with the output.
template <typename scalar_t>
MEDURWKV_INLINE void forward_task(const scalar_t* __restrict k, const scalar_t* __restrict v, scalar_t* __restrict y,
                  const Task& tk, scalar_t* __restrict scratch, double* __restrict st) {
  const int64_t cw = tk.cw, T = tk.T, C = tk.C;
  constexpr int kDeg = ExpDeg<scalar_t>::value;
  const double* __restrict kmax = tk.kmax;
  const double* __restrict ew = tk.ew;
  const double* __restrict eu = tk.eu;
  scalar_t* __restrict ebuf = scratch;
  scalar_t* __restrict bdbuf = scratch + T * cw;
  double* __restrict sn = st;  // running sums (numerator, denominator)
  double* __restrict sd = st + cw;
  for (int64_t j = 0; j < cw; ++j) sn[j] = sd[j] = 0.0;
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* __restrict kt = k + t * C;
    const scalar_t* __restrict vt = v + t * C;
    scalar_t* __restrict yt = y + t * C;
    scalar_t* __restrict et = ebuf + t * cw;
    scalar_t* __restrict bdt = bdbuf + t * cw;
    for (int64_t j = 0; j < cw; ++j) {
      const double e = exp_nonpos<kDeg>(static_cast<double>(kt[j]) - kmax[j]);
      et[j] = static_cast<scalar_t>(e);
      yt[j] = static_cast<scalar_t>(sn[j]);
      bdt[j] = static_cast<scalar_t>(sd[j]);
      sn[j] = ew[j] * sn[j] + e * static_cast<double>(vt[j]);
      sd[j] = ew[j] * sd[j] + e;
    }
  }
  for (int64_t j = 0; j < cw; ++j) sn[j] = sd[j] = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* __restrict vt = v + t * C;
    scalar_t* __restrict yt = y + t * C;
    const scalar_t* __restrict et = ebuf + t * cw;
    const scalar_t* __restrict bdt = bdbuf + t * cw;
    for (int64_t j = 0; j < cw; ++j) {
      const double e = static_cast<double>(et[j]);
      const double vv = static_cast<double>(vt[j]);
      const double s = eu[j] * e;
      const double num = sn[j] + static_cast<double>(yt[j]) + s * vv;
      const double den = sd[j] + static_cast<double>(bdt[j]) + s;
      yt[j] = static_cast<scalar_t>(num / den);
      sn[j] = ew[j] * sn[j] + e * vv;
      sd[j] = ew[j] * sd[j] + e;
    }
  }
}

// Scratch (scalar_t, [T][cw] each): e_t, right denominator sums, g_t. gv and gk hold the left
// scans of g and g * y until the last pass overwrites them with the gradients.
template <typename scalar_t>
MEDURWKV_INLINE void backward_task(const scalar_t* __restrict k, const scalar_t* __restrict v,
                   const scalar_t* __restrict y, const scalar_t* __restrict gy,
                   scalar_t* __restrict gk, scalar_t* __restrict gv, double* __restrict gw,
                   double* __restrict gu, const Task& tk, scalar_t* __restrict scratch,
                   double* __restrict st) {
  const int64_t cw = tk.cw, T = tk.T, C = tk.C;
  constexpr int kDeg = ExpDeg<scalar_t>::value;
  const double* __restrict kmax = tk.kmax;
  const double* __restrict ew = tk.ew;
  const double* __restrict eu = tk.eu;
  scalar_t* __restrict ebuf = scratch;
  scalar_t* __restrict bdbuf = scratch + T * cw;
  scalar_t* __restrict gbuf = scratch + 2 * T * cw;
  double* __restrict sn = st;  // value sums
  double* __restrict sd = st + cw;  // key sums (denominator)
  double* __restrict dn = st + 2 * cw;  // distance-weighted sums
  double* __restrict dd = st + 3 * cw;
  double* __restrict p = st + 4 * cw;  // scans of g and g * y
  double* __restrict q = st + 5 * cw;
  double* __restrict dw = st + 6 * cw;
  double* __restrict du = st + 7 * cw;
  for (int64_t j = 0; j < 8 * cw; ++j) st[j] = 0.0;
  // Pass 1 (right to left): e_t and the right denominator sums.
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* __restrict kt = k + t * C;
    scalar_t* __restrict et = ebuf + t * cw;
    scalar_t* __restrict bdt = bdbuf + t * cw;
    for (int64_t j = 0; j < cw; ++j) {
      const double e = exp_nonpos<kDeg>(static_cast<double>(kt[j]) - kmax[j]);
      et[j] = static_cast<scalar_t>(e);
      bdt[j] = static_cast<scalar_t>(sd[j]);
      sd[j] = ew[j] * sd[j] + e;
    }
  }
  for (int64_t j = 0; j < cw; ++j) sd[j] = 0.0;
  // Pass 2 (left to right): den_t, g_t, left part of dw, left scans of g and g * y.
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* __restrict vt = v + t * C;
    const scalar_t* __restrict yt = y + t * C;
    const scalar_t* __restrict gyt = gy + t * C;
    scalar_t* __restrict plt = gv + t * C;
    scalar_t* __restrict qlt = gk + t * C;
    const scalar_t* __restrict et = ebuf + t * cw;
    const scalar_t* __restrict bdt = bdbuf + t * cw;
    scalar_t* __restrict gt = gbuf + t * cw;
    for (int64_t j = 0; j < cw; ++j) {
      const double e = static_cast<double>(et[j]);
      const double vv = static_cast<double>(vt[j]);
      const double yy = static_cast<double>(yt[j]);
      const double den = sd[j] + static_cast<double>(bdt[j]) + eu[j] * e;
      const double g = static_cast<double>(gyt[j]) / den;
      gt[j] = static_cast<scalar_t>(g);
      dw[j] += g * (dn[j] - yy * dd[j]);
      plt[j] = static_cast<scalar_t>(p[j]);
      qlt[j] = static_cast<scalar_t>(q[j]);
      dn[j] = ew[j] * (dn[j] + sn[j]);
      dd[j] = ew[j] * (dd[j] + sd[j]);
      sn[j] = ew[j] * sn[j] + e * vv;
      sd[j] = ew[j] * sd[j] + e;
      p[j] = ew[j] * p[j] + g;
      q[j] = ew[j] * q[j] + g * yy;
    }
  }
  for (int64_t j = 0; j < 6 * cw; ++j) st[j] = 0.0;
  // Pass 3 (right to left): right part of dw, right scans of g and g * y, dk, dv, du.
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* __restrict vt = v + t * C;
    const scalar_t* __restrict yt = y + t * C;
    scalar_t* __restrict gkt = gk + t * C;
    scalar_t* __restrict gvt = gv + t * C;
    const scalar_t* __restrict et = ebuf + t * cw;
    const scalar_t* __restrict gt = gbuf + t * cw;
    for (int64_t j = 0; j < cw; ++j) {
      const double e = static_cast<double>(et[j]);
      const double vv = static_cast<double>(vt[j]);
      const double yy = static_cast<double>(yt[j]);
      const double g = static_cast<double>(gt[j]);
      dw[j] += g * (dn[j] - yy * dd[j]);
      const double eug = eu[j] * g;
      const double pp = static_cast<double>(gvt[j]) + p[j] + eug;
      const double qq = static_cast<double>(gkt[j]) + q[j] + eug * yy;
      const double dv = e * pp;
      gvt[j] = static_cast<scalar_t>(dv);
      gkt[j] = static_cast<scalar_t>(vv * dv - e * qq);
      du[j] += eug * e * (vv - yy);
      dn[j] = ew[j] * (dn[j] + sn[j]);
      dd[j] = ew[j] * (dd[j] + sd[j]);
      sn[j] = ew[j] * sn[j] + e * vv;
      sd[j] = ew[j] * sd[j] + e;
      p[j] = ew[j] * p[j] + g;
      q[j] = ew[j] * q[j] + g * yy;
    }
  }
  for (int64_t j = 0; j < cw; ++j) {
    gw[j] = -dw[j];
    gu[j] = du[j];
  }
}

#define MEDURWKV_ENTRY(T_)                                                                       \
  MEDURWKV_CLONES bool run_forward(const T_* k, const T_* v, T_* y, const double* w,              \
                                   const double* u, Task& tk, T_* scratch, double* st) {          \
    if (!prepare<T_>(k, w, u, tk, st)) return false;                                             \
    forward_task<T_>(k, v, y, tk, scratch, st);                                                  \
    return true;                                                                                 \
  }                                                                                              \
  MEDURWKV_CLONES void run_backward(const T_* k, const T_* v, const T_* y, const T_* gy, T_* gk,  \
                                    T_* gv, double* gw, double* gu, const double* w,              \
                                    const double* u, Task& tk, T_* scratch, double* st) {         \
    prepare<T_>(k, w, u, tk, st);                                                                \
    backward_task<T_>(k, v, y, gy, gk, gv, gw, gu, tk, scratch, st);                             \
  }
MEDURWKV_ENTRY(float)
MEDURWKV_ENTRY(double)
#undef MEDURWKV_ENTRY

// Splits the channels of each batch row into n_split contiguous ranges (multiples of kW wide)
// so that B * n_split tasks keep every thread busy.
struct Split {
  int64_t n_split, width;
};

Split make_split(int64_t B, int64_t C) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t max_split = (C + kW - 1) / kW;
  const int64_t want = (threads + B - 1) / B;
  int64_t n = std::max<int64_t>(1, std::min(max_split, want));
  int64_t width = (C + n - 1) / n;
  width = ((width + kW - 1) / kW) * kW;
  n = (C + width - 1) / width;
  return {n, width};
}

template <typename T>
std::unique_ptr<T[]> uninit(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(n)]);
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

// Returns (y, ok). ok == false: some (batch row, channel) needs a larger range than float64
// scaling by max(k) gives (see the header); y is then incomplete and must not be used.
std::tuple<torch::Tensor, bool> bi_wkv_forward(torch::Tensor w, torch::Tensor u, torch::Tensor k,
                                               torch::Tensor v) {
  check_args(w, u, k, v);
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  auto wd = w.to(torch::kDouble).contiguous();
  auto ud = u.to(torch::kDouble).contiguous();
  auto y = torch::empty_like(k);
  const Split sp = make_split(B, C);
  std::vector<char> ok_task(static_cast<size_t>(B * sp.n_split), 1);
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "bi_wkv_cpu_forward", [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const double* wp = wd.data_ptr<double>();
    const double* up = ud.data_ptr<double>();
    at::parallel_for(0, B * sp.n_split, 1, [&](int64_t begin, int64_t end) {
      auto scratch_own = uninit<scalar_t>(2 * T * sp.width);
      auto dbuf_own = uninit<double>(6 * sp.width);
      scalar_t* scratch = scratch_own.get();
      double* dbuf = dbuf_own.get();
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / sp.n_split, c0 = (task % sp.n_split) * sp.width;
        Task tk{T, C, std::min(sp.width, C - c0), dbuf, dbuf + sp.width,
                dbuf + 2 * sp.width};
        double* st = dbuf + 3 * sp.width;  // kmin in prepare, then 2 running sums
        const int64_t off = b * T * C + c0;
        if (!run_forward(kp + off, vp + off, yp + off, wp + c0, up + c0, tk, scratch, st))
          ok_task[task] = 0;
      }
    });
  });
  const bool ok = std::all_of(ok_task.begin(), ok_task.end(), [](char c) { return c != 0; });
  return std::make_tuple(y, ok);
}

// Returns (gw, gu, gk, gv); gw and gu in the dtype of w. Valid only where bi_wkv_forward said ok.
std::vector<torch::Tensor> bi_wkv_backward(torch::Tensor w, torch::Tensor u, torch::Tensor k,
                                           torch::Tensor v, torch::Tensor y, torch::Tensor gy) {
  check_args(w, u, k, v);
  TORCH_CHECK(y.sizes() == k.sizes() && gy.sizes() == k.sizes(), "bi_wkv_cpu: y, gy must match k");
  y = y.to(k.scalar_type()).contiguous();
  gy = gy.to(k.scalar_type()).contiguous();
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  auto wd = w.to(torch::kDouble).contiguous();
  auto ud = u.to(torch::kDouble).contiguous();
  auto gk = torch::empty_like(k);
  auto gv = torch::empty_like(k);
  auto gwp = torch::zeros({B, C}, k.options().dtype(torch::kDouble));
  auto gup = torch::zeros({B, C}, k.options().dtype(torch::kDouble));
  const Split sp = make_split(B, C);
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "bi_wkv_cpu_backward", [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* gyp = gy.data_ptr<scalar_t>();
    scalar_t* gkp = gk.data_ptr<scalar_t>();
    scalar_t* gvp = gv.data_ptr<scalar_t>();
    double* gwpp = gwp.data_ptr<double>();
    double* gupp = gup.data_ptr<double>();
    const double* wp = wd.data_ptr<double>();
    const double* up = ud.data_ptr<double>();
    at::parallel_for(0, B * sp.n_split, 1, [&](int64_t begin, int64_t end) {
      auto scratch_own = uninit<scalar_t>(3 * T * sp.width);
      auto dbuf_own = uninit<double>(11 * sp.width);
      scalar_t* scratch = scratch_own.get();
      double* dbuf = dbuf_own.get();
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / sp.n_split, c0 = (task % sp.n_split) * sp.width;
        Task tk{T, C, std::min(sp.width, C - c0), dbuf, dbuf + sp.width,
                dbuf + 2 * sp.width};
        double* st = dbuf + 3 * sp.width;  // kmin in prepare, then 8 running sums
        const int64_t off = b * T * C + c0;
        run_backward(kp + off, vp + off, yp + off, gyp + off, gkp + off, gvp + off,
                     gwpp + b * C + c0, gupp + b * C + c0, wp + c0, up + c0, tk, scratch, st);
      }
    });
  });
  auto gw = gwp.sum(0).to(w.scalar_type());
  auto gu = gup.sum(0).to(u.scalar_type());
  return {gw, gu, gk, gv};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Bi-WKV CPU kernel (medurwkv_net)";
  m.def("forward", &bi_wkv_forward, "Bi-WKV forward: (w, u, k, v) -> (y, ok)");
  m.def("backward", &bi_wkv_backward, "Bi-WKV backward: (w, u, k, v, y, gy) -> (gw, gu, gk, gv)");
}
