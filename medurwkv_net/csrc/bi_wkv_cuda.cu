// Bi-WKV CUDA kernel: O(T) forward and backward, any B, T, C (no T_MAX), float32 / float16 /
// bfloat16 / float64 inputs read and written in their own dtype, float32 arithmetic inside
// (float64 for float64 inputs and for the cross-chunk scan).
//
// Definition and gradient identities: see csrc/bi_wkv_cpu.cpp. Every quantity below is a
// "bidirectional exclusive decayed sum" of some per-token value x:
//   SL_t = sum_{i<t} ew^(t-1-i) x_i,   SR_t = sum_{i>t} ew^(i-1-t) x_i,        ew = exp(-w)
//   DL_t = sum_{i<t} (t-1-i) ew^(t-1-i) x_i,  DR_t likewise (distance-weighted, for dw).
// forward : x = e v and x = e (e_t = exp(k_t - kmax)); y = (SL+SR+eu e v) / (SL'+SR'+eu e).
// backward: den from x = e (as above), g = dy / den, then x = g and x = g y with D sums:
//   dv = e (S[g] + eu g), dk = v dv - e (S[gy] + eu g y), du = sum eu e g (v - y),
//   dw = -sum e (v D[g] - D[gy]).
// The T axis is cut into chunks of L tokens and every sum is computed by a three-phase scan, so
// the grid has B * ceil(T/L) * C threads however small B * C is:
//   1. one thread per (b, chunk, c): the chunk's own sums ("carries") for both directions;
//   2. one warp per (b, c): a Kogge-Stone scan of the carries over the chunks (float64);
//   3. one thread per (b, chunk, c): the in-chunk recurrences started from the scanned carries.
// kmax (per b, c) keeps every exp <= 1. The host code checks that the values then fit float32
// (see kmax_and_range) and otherwise reports ok = false so that the caller uses its log-scaled fallback.
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <tuple>
#include <vector>

namespace {

constexpr int kThreads = 256;
constexpr int kFwdChunk = 32;  // tokens per chunk, forward
constexpr int kBwdChunk = 16;  // tokens per chunk, backward (more values per token)

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ typename Acc<T>::type ld_val(const T* p) {
  return static_cast<typename Acc<T>::type>(*p);
}
template <>
__device__ __forceinline__ float ld_val<at::Half>(const at::Half* p) {
  return __half2float(*reinterpret_cast<const __half*>(p));
}
template <>
__device__ __forceinline__ float ld_val<at::BFloat16>(const at::BFloat16* p) {
  return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
}
template <typename T>
__device__ __forceinline__ void st_val(T* p, typename Acc<T>::type x) {
  *p = static_cast<T>(x);
}
template <>
__device__ __forceinline__ void st_val<at::Half>(at::Half* p, float x) {
  *reinterpret_cast<__half*>(p) = __float2half_rn(x);
}
template <>
__device__ __forceinline__ void st_val<at::BFloat16>(at::BFloat16* p, float x) {
  *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(x);
}

__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }

struct Dims {
  int64_t B, T, C, N;  // N = number of chunks
  int L;               // chunk length
};

// ---------------------------------------------------------------------------------------------
// Phase 1, forward: carries of x0 = e v and x1 = e for both directions.
// carry layout [B, N, C, 4]: (left x0, left x1, right x0, right x1).
template <typename scalar_t, int L>
__global__ void fwd_carries(const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                            const typename Acc<scalar_t>::type* __restrict__ kmax, const typename Acc<scalar_t>::type* __restrict__ w, Dims d,
                            typename Acc<scalar_t>::type* __restrict__ carry) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t t0 = n * L;
    const int len = (int)min((int64_t)L, d.T - t0);
    const acc_t ew = ex(-(acc_t)w[c]);
    const acc_t km = kmax[b * d.C + c];
    const scalar_t* kp = k + (b * d.T + t0) * d.C + c;
    const scalar_t* vp = v + (b * d.T + t0) * d.C + c;
    acc_t l0 = 0, l1 = 0, r0 = 0, r1 = 0, f = 1;
#pragma unroll
    for (int j = 0; j < L; ++j) {
      if (j < len) {
        const acc_t e = ex(ld_val(kp + j * d.C) - km);
        const acc_t x0 = e * ld_val(vp + j * d.C);
        l0 = ew * l0 + x0;
        l1 = ew * l1 + e;
        r0 += f * x0;
        r1 += f * e;
        f *= ew;
      }
    }
    acc_t* out = carry + idx * 4;
    out[0] = l0;
    out[1] = l1;
    out[2] = r0;
    out[3] = r1;
  }
}

// ---------------------------------------------------------------------------------------------
// Phase 2: one warp per (b, c) scans M carry values per chunk over the chunks, in float64.
// Input carry [B, N, C, 2 * M (plain) or 4 * M (with distance sums)]:
//   plain : [left_0..left_{M-1}, right_0..right_{M-1}]
//   with D: [left S_0..S_{M-1}, left D_0.., right S_0.., right D_0..]
// Output state [B, N, C, same]: the sums arriving at the chunk from the left (at its first token)
// and from the right (at its last token).
template <typename acc_t, int M, bool WithD>
__global__ void scan_carries(const acc_t* __restrict__ carry, acc_t* __restrict__ state,
                             const acc_t* __restrict__ w, Dims d) {
  constexpr int P = WithD ? 4 * M : 2 * M;
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  if (warp >= d.B * d.C) return;
  const int64_t b = warp / d.C, c = warp % d.C;
  const double a = exp(-(double)w[c] * (double)d.L);  // decay across one full chunk
  double apow[6];                                      // a^(2^s)
  apow[0] = a;
  for (int s = 1; s < 6; ++s) apow[s] = apow[s - 1] * apow[s - 1];
  const double Ld = (double)d.L;
  for (int dir = 0; dir < 2; ++dir) {
    // dir 0: left-to-right over chunks 0..N-1; dir 1: right-to-left (chunk N-1-n).
    double runS[M], runD[M];  // state entering the current group of 32 chunks
    for (int m = 0; m < M; ++m) runS[m] = runD[m] = 0.0;
    for (int64_t base = 0; base < d.N; base += 32) {
      const int64_t pos = base + lane;
      const bool valid = pos < d.N;
      const int64_t n = dir == 0 ? pos : d.N - 1 - pos;
      double s[M], dd[M];
      for (int m = 0; m < M; ++m) {
        s[m] = dd[m] = 0.0;
        if (valid) {
          const acc_t* cp = carry + ((b * d.N + n) * d.C + c) * P;
          s[m] = (double)cp[(WithD ? 2 * dir * M : dir * M) + m];
          if (WithD) dd[m] = (double)cp[(2 * dir + 1) * M + m];
        }
      }
      // Inclusive Kogge-Stone scan over lanes: element j absorbs element j - 2^s shifted by 2^s
      // chunks (decay a^(2^s), distance + 2^s * L).
      for (int st = 0; st < 5; ++st) {
        const int off = 1 << st;
        for (int m = 0; m < M; ++m) {
          const double ps = __shfl_up_sync(0xffffffffu, s[m], off);
          const double pd = WithD ? __shfl_up_sync(0xffffffffu, dd[m], off) : 0.0;
          if (lane >= off) {
            if (WithD) dd[m] += apow[st] * (pd + (double)off * Ld * ps);
            s[m] += apow[st] * ps;
          }
        }
      }
      // Exclusive result for chunk pos: the run state moved over `lane` chunks plus the inclusive
      // scan of the previous lane.
      double apl = 1.0;  // a^lane
      for (int st = 0; st < 5; ++st)
        if (lane & (1 << st)) apl *= apow[st];
      for (int m = 0; m < M; ++m) {
        const double ps = __shfl_up_sync(0xffffffffu, s[m], 1);
        const double pd = WithD ? __shfl_up_sync(0xffffffffu, dd[m], 1) : 0.0;
        const double ex_s = (lane > 0 ? ps : 0.0) + apl * runS[m];
        const double ex_d =
            (lane > 0 ? pd : 0.0) + apl * (runD[m] + (double)lane * Ld * runS[m]);
        if (valid) {
          acc_t* sp = state + ((b * d.N + n) * d.C + c) * P;
          sp[(WithD ? 2 * dir * M : dir * M) + m] = (acc_t)ex_s;
          if (WithD) sp[(2 * dir + 1) * M + m] = (acc_t)ex_d;
        }
        // Run state after the 32 chunks of this group: inclusive value of lane 31 plus the old
        // run state moved over 32 chunks.
        const double last_s = __shfl_sync(0xffffffffu, s[m], 31);
        const double last_d = WithD ? __shfl_sync(0xffffffffu, dd[m], 31) : 0.0;
        const double a32 = apow[5];
        const double new_d = last_d + a32 * (runD[m] + 32.0 * Ld * runS[m]);
        runS[m] = last_s + a32 * runS[m];
        runD[m] = new_d;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Phase 3, forward: in-chunk recurrences from the scanned states; writes y.
template <typename scalar_t, int L>
__global__ void fwd_output(const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                           const typename Acc<scalar_t>::type* __restrict__ kmax, const typename Acc<scalar_t>::type* __restrict__ w,
                           const typename Acc<scalar_t>::type* __restrict__ u, Dims d,
                           const typename Acc<scalar_t>::type* __restrict__ state,
                           scalar_t* __restrict__ y) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t t0 = n * L;
    const int len = (int)min((int64_t)L, d.T - t0);
    const acc_t ew = ex(-(acc_t)w[c]);
    const acc_t eu = ex((acc_t)u[c]);
    const acc_t km = kmax[b * d.C + c];
    const scalar_t* kp = k + (b * d.T + t0) * d.C + c;
    const scalar_t* vp = v + (b * d.T + t0) * d.C + c;
    scalar_t* yp = y + (b * d.T + t0) * d.C + c;
    const acc_t* sp = state + idx * 4;
    acc_t rn[L], rd[L];
    acc_t sn = sp[2], sd = sp[3];  // right sums at the chunk's last token
#pragma unroll
    for (int j = L - 1; j >= 0; --j) {
      if (j < len) {
        rn[j] = sn;
        rd[j] = sd;
        const acc_t e = ex(ld_val(kp + j * d.C) - km);
        sn = ew * sn + e * ld_val(vp + j * d.C);
        sd = ew * sd + e;
      }
    }
    sn = sp[0];
    sd = sp[1];  // left sums at the chunk's first token
#pragma unroll
    for (int j = 0; j < L; ++j) {
      if (j < len) {
        const acc_t e = ex(ld_val(kp + j * d.C) - km);
        const acc_t vv = ld_val(vp + j * d.C);
        const acc_t s = eu * e;
        st_val(yp + j * d.C, (sn + rn[j] + s * vv) / (sd + rd[j] + s));
        sn = ew * sn + e * vv;
        sd = ew * sd + e;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward phase 1a: carries of x = e (denominator), layout [B, N, C, 2] (left, right).
template <typename scalar_t, int L>
__global__ void den_carries(const scalar_t* __restrict__ k, const typename Acc<scalar_t>::type* __restrict__ kmax,
                            const typename Acc<scalar_t>::type* __restrict__ w, Dims d,
                            typename Acc<scalar_t>::type* __restrict__ carry) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t t0 = n * L;
    const int len = (int)min((int64_t)L, d.T - t0);
    const acc_t ew = ex(-(acc_t)w[c]);
    const acc_t km = kmax[b * d.C + c];
    const scalar_t* kp = k + (b * d.T + t0) * d.C + c;
    acc_t l = 0, r = 0, f = 1;
#pragma unroll
    for (int j = 0; j < L; ++j) {
      if (j < len) {
        const acc_t e = ex(ld_val(kp + j * d.C) - km);
        l = ew * l + e;
        r += f * e;
        f *= ew;
      }
    }
    carry[idx * 2] = l;
    carry[idx * 2 + 1] = r;
  }
}

// Backward phase 1b: g = dy / den (stored, acc_t) and carries of x0 = g, x1 = g y with distance
// sums, layout [B, N, C, 8]: left S0 S1, left D0 D1, right S0 S1, right D0 D1.
template <typename scalar_t, int L>
__global__ void grad_carries(const scalar_t* __restrict__ k, const scalar_t* __restrict__ y,
                             const scalar_t* __restrict__ gy, const typename Acc<scalar_t>::type* __restrict__ kmax,
                             const typename Acc<scalar_t>::type* __restrict__ w, const typename Acc<scalar_t>::type* __restrict__ u, Dims d,
                             const typename Acc<scalar_t>::type* __restrict__ den_state,
                             typename Acc<scalar_t>::type* __restrict__ g_out,
                             typename Acc<scalar_t>::type* __restrict__ carry) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t t0 = n * L;
    const int len = (int)min((int64_t)L, d.T - t0);
    const acc_t ew = ex(-(acc_t)w[c]);
    const acc_t eu = ex((acc_t)u[c]);
    const acc_t km = kmax[b * d.C + c];
    const int64_t base = (b * d.T + t0) * d.C + c;
    acc_t rd[L];
    acc_t s = den_state[idx * 2 + 1];
#pragma unroll
    for (int j = L - 1; j >= 0; --j) {
      if (j < len) {
        rd[j] = s;
        s = ew * s + ex(ld_val(k + base + j * d.C) - km);
      }
    }
    s = den_state[idx * 2];
    acc_t l0 = 0, l1 = 0, ld0 = 0, ld1 = 0, r0 = 0, r1 = 0, rd0 = 0, rd1 = 0, f = 1;
#pragma unroll
    for (int j = 0; j < L; ++j) {
      if (j < len) {
        const acc_t e = ex(ld_val(k + base + j * d.C) - km);
        const acc_t g = ld_val(gy + base + j * d.C) / (s + rd[j] + eu * e);
        const acc_t gyy = g * ld_val(y + base + j * d.C);
        g_out[base + j * d.C] = g;
        s = ew * s + e;
        ld0 = ew * (ld0 + l0);
        ld1 = ew * (ld1 + l1);
        l0 = ew * l0 + g;
        l1 = ew * l1 + gyy;
        r0 += f * g;
        r1 += f * gyy;
        rd0 += (acc_t)j * f * g;
        rd1 += (acc_t)j * f * gyy;
        f *= ew;
      }
    }
    acc_t* out = carry + idx * 8;
    out[0] = l0;
    out[1] = l1;
    out[2] = ld0;
    out[3] = ld1;
    out[4] = r0;
    out[5] = r1;
    out[6] = rd0;
    out[7] = rd1;
  }
}

// Backward phase 3: dk, dv and per-chunk partial sums of du, dw ([B, N, C] each).
template <typename scalar_t, int L>
__global__ void grad_output(const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                            const scalar_t* __restrict__ y, const typename Acc<scalar_t>::type* __restrict__ kmax,
                            const typename Acc<scalar_t>::type* __restrict__ w, const typename Acc<scalar_t>::type* __restrict__ u, Dims d,
                            const typename Acc<scalar_t>::type* __restrict__ g_in,
                            const typename Acc<scalar_t>::type* __restrict__ state,
                            scalar_t* __restrict__ gk, scalar_t* __restrict__ gv,
                            typename Acc<scalar_t>::type* __restrict__ du_part,
                            typename Acc<scalar_t>::type* __restrict__ dw_part) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t t0 = n * L;
    const int len = (int)min((int64_t)L, d.T - t0);
    const acc_t ew = ex(-(acc_t)w[c]);
    const acc_t eu = ex((acc_t)u[c]);
    const acc_t km = kmax[b * d.C + c];
    const int64_t base = (b * d.T + t0) * d.C + c;
    const acc_t* sp = state + idx * 8;
    // Right sums (S and D of g and g y) at every token of the chunk.
    acc_t rs0[L], rs1[L], rdd0[L], rdd1[L];
    acc_t s0 = sp[4], s1 = sp[5], d0 = sp[6], d1 = sp[7];
#pragma unroll
    for (int j = L - 1; j >= 0; --j) {
      if (j < len) {
        rs0[j] = s0;
        rs1[j] = s1;
        rdd0[j] = d0;
        rdd1[j] = d1;
        const acc_t g = g_in[base + j * d.C];
        const acc_t gyy = g * ld_val(y + base + j * d.C);
        d0 = ew * (d0 + s0);
        d1 = ew * (d1 + s1);
        s0 = ew * s0 + g;
        s1 = ew * s1 + gyy;
      }
    }
    s0 = sp[0];
    s1 = sp[1];
    d0 = sp[2];
    d1 = sp[3];
    acc_t du = 0, dw = 0;
#pragma unroll
    for (int j = 0; j < L; ++j) {
      if (j < len) {
        const acc_t e = ex(ld_val(k + base + j * d.C) - km);
        const acc_t vv = ld_val(v + base + j * d.C);
        const acc_t yy = ld_val(y + base + j * d.C);
        const acc_t g = g_in[base + j * d.C];
        const acc_t eug = eu * g;
        const acc_t dv = e * (s0 + rs0[j] + eug);
        st_val(gv + base + j * d.C, dv);
        st_val(gk + base + j * d.C, vv * dv - e * (s1 + rs1[j] + eug * yy));
        du += eug * e * (vv - yy);
        dw -= e * (vv * (d0 + rdd0[j]) - (d1 + rdd1[j]));
        d0 = ew * (d0 + s0);
        d1 = ew * (d1 + s1);
        s0 = ew * s0 + g;
        s1 = ew * s1 + g * yy;
      }
    }
    du_part[idx] = du;
    dw_part[idx] = dw;
  }
}

int blocks_for(int64_t threads_needed) {
  const int64_t b = (threads_needed + kThreads - 1) / kThreads;
  return (int)std::min<int64_t>(std::max<int64_t>(b, 1), 1 << 30);
}

void check(const torch::Tensor& w, const torch::Tensor& u, const torch::Tensor& k,
           const torch::Tensor& v) {
  TORCH_CHECK(k.is_cuda(), "bi_wkv_cuda: k must be a CUDA tensor");
  TORCH_CHECK(k.dim() == 3 && k.numel() > 0, "bi_wkv_cuda: k must be a non-empty [B, T, C] tensor");
  TORCH_CHECK(v.sizes() == k.sizes() && v.scalar_type() == k.scalar_type() && v.device() == k.device(),
              "bi_wkv_cuda: v must match k");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "bi_wkv_cuda: k and v must be contiguous");
  TORCH_CHECK(w.dim() == 1 && u.dim() == 1 && w.size(0) == k.size(2) && u.size(0) == k.size(2),
              "bi_wkv_cuda: w and u must be [C]");
}

// kmax per (b, c) (in the accumulation dtype) and the range test: values stay below
// exp(limit) (80 for float32 accumulation, 600 for float64) when
//   (T - 1) * max(0, -w) + (kmax - kmin) + |u| + log(T) <= limit.
std::tuple<torch::Tensor, bool> kmax_and_range(const torch::Tensor& w, const torch::Tensor& u,
                                               const torch::Tensor& k, bool check_range) {
  const bool dbl = k.scalar_type() == torch::kDouble;
  const auto acc = dbl ? torch::kDouble : torch::kFloat;
  auto kf = k.to(acc);
  auto kmax = std::get<0>(kf.max(1)).contiguous();  // [B, C]
  if (!check_range) return std::make_tuple(kmax, true);
  auto kmin = std::get<0>(kf.min(1));
  const double T = (double)k.size(1);
  auto grow = (-w.to(acc)).clamp_min(0) * (T - 1);
  auto s = grow.unsqueeze(0) + (kmax - kmin) + u.to(acc).abs().unsqueeze(0) + std::log(T);
  const bool ok = (s <= (dbl ? 600.0 : 80.0)).all().item<bool>();
  return std::make_tuple(kmax, ok);
}

}  // namespace

std::tuple<torch::Tensor, bool> bi_wkv_forward(torch::Tensor w, torch::Tensor u, torch::Tensor k,
                                               torch::Tensor v) {
  check(w, u, k, v);
  const c10::cuda::CUDAGuard guard(k.device());
  auto [kmax, ok] = kmax_and_range(w, u, k, true);
  auto y = torch::empty_like(k);
  if (!ok) return std::make_tuple(y, false);
  const auto acc_dtype = k.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto wf = w.to(acc_dtype).contiguous();
  auto uf = u.to(acc_dtype).contiguous();
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  constexpr int L = kFwdChunk;
  Dims d{B, T, C, (T + L - 1) / L, L};
  auto carry = torch::empty({B, d.N, C, 4}, k.options().dtype(acc_dtype));
  auto state = torch::empty_like(carry);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t work = B * d.N * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), "bi_wkv_cuda_forward", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    fwd_carries<scalar_t, L><<<blocks_for(work), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), kmax.data_ptr<acc_t>(), wf.data_ptr<acc_t>(), d,
        carry.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scan_carries<acc_t, 2, false><<<blocks_for(B * C * 32), kThreads, 0, stream>>>(
        carry.data_ptr<acc_t>(), state.data_ptr<acc_t>(), wf.data_ptr<acc_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fwd_output<scalar_t, L><<<blocks_for(work), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), kmax.data_ptr<acc_t>(), wf.data_ptr<acc_t>(),
        uf.data_ptr<acc_t>(), d, state.data_ptr<acc_t>(), y.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return std::make_tuple(y, true);
}

std::vector<torch::Tensor> bi_wkv_backward(torch::Tensor w, torch::Tensor u, torch::Tensor k,
                                           torch::Tensor v, torch::Tensor y, torch::Tensor gy) {
  check(w, u, k, v);
  const c10::cuda::CUDAGuard guard(k.device());
  y = y.to(k.scalar_type()).contiguous();
  gy = gy.to(k.scalar_type()).contiguous();
  auto kmax = std::get<0>(kmax_and_range(w, u, k, false));
  const auto acc_dtype = k.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto wf = w.to(acc_dtype).contiguous();
  auto uf = u.to(acc_dtype).contiguous();
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  constexpr int L = kBwdChunk;
  Dims d{B, T, C, (T + L - 1) / L, L};
  auto opts = k.options().dtype(acc_dtype);
  auto den_carry = torch::empty({B, d.N, C, 2}, opts);
  auto den_state = torch::empty_like(den_carry);
  auto g = torch::empty({B, T, C}, opts);
  auto carry = torch::empty({B, d.N, C, 8}, opts);
  auto state = torch::empty_like(carry);
  auto du_part = torch::empty({B, d.N, C}, opts);
  auto dw_part = torch::empty({B, d.N, C}, opts);
  auto gk = torch::empty_like(k);
  auto gv = torch::empty_like(k);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t work = B * d.N * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), "bi_wkv_cuda_backward", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    den_carries<scalar_t, L><<<blocks_for(work), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), kmax.data_ptr<acc_t>(), wf.data_ptr<acc_t>(), d, den_carry.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scan_carries<acc_t, 1, false><<<blocks_for(B * C * 32), kThreads, 0, stream>>>(
        den_carry.data_ptr<acc_t>(), den_state.data_ptr<acc_t>(), wf.data_ptr<acc_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_carries<scalar_t, L><<<blocks_for(work), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), kmax.data_ptr<acc_t>(),
        wf.data_ptr<acc_t>(), uf.data_ptr<acc_t>(), d, den_state.data_ptr<acc_t>(), g.data_ptr<acc_t>(),
        carry.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scan_carries<acc_t, 2, true><<<blocks_for(B * C * 32), kThreads, 0, stream>>>(
        carry.data_ptr<acc_t>(), state.data_ptr<acc_t>(), wf.data_ptr<acc_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_output<scalar_t, L><<<blocks_for(work), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), kmax.data_ptr<acc_t>(),
        wf.data_ptr<acc_t>(), uf.data_ptr<acc_t>(), d, g.data_ptr<acc_t>(), state.data_ptr<acc_t>(),
        gk.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), du_part.data_ptr<acc_t>(), dw_part.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto gw = dw_part.sum({0, 1}, false, torch::kDouble).to(w.scalar_type());
  auto gu = du_part.sum({0, 1}, false, torch::kDouble).to(u.scalar_type());
  return {gw, gu, gk, gv};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Bi-WKV CUDA kernel (medurwkv_net)";
  m.def("forward", &bi_wkv_forward, "Bi-WKV forward: (w, u, k, v) -> (y, ok)");
  m.def("backward", &bi_wkv_backward, "Bi-WKV backward: (w, u, k, v, y, gy) -> (gw, gu, gk, gv)");
}
