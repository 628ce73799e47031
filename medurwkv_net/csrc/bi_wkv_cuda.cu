// Bi-WKV CUDA kernel: O(T) forward and backward, any B, T, C (no T_MAX), float32 / float16 /
// bfloat16 / float64 inputs read and written in their own dtype, float32 accumulation (float64 for
// float64 inputs and for the chunk scan). The math (log-scaled sums with a running maximum, centred values, chunk carries,
// the per-lane steps of the chunk scan, the gradient formulas) lives in bi_wkv_math.cuh, which the CPU
// tests compile and run as host code; this file holds only the launches and the warp shuffles.
//
// Per call, with no host synchronisation: c0 (the centring value, a reduction over the first chunk),
// then three phases over chunks of biwkv::kChunk tokens, one thread per (b, chunk, c):
//   1. *_carries: each chunk's own left and right sums;
//   2. scan_carries: one warp per (b, c) scans them over the chunks, in float64;
//   3. fwd_output / bwd_output: the in-chunk recurrences from the scanned states.
// Any finite w, u, k gives finite, exact results (no range limit, no fallback).
//
// Bytes moved per element (float32, L = kChunk = 16; carries are 3 (forward) or 5 (backward) floats
// per direction and chunk):
//   forward : phase 1 8 (k, v), carries 1.5 + scan 3, phase 3 8 (k, v) + 1.5 + 12 (y, y', lse)
//             = 34 bytes;
//   backward: phase 1 12 (y', lse, dy), carries 2.5 + scan 5, phase 3 20 (k, v, y', lse, dy) + 2.5
//             + 8 (dk, dv) + 0.5 (du, dw partials) = 50.5 bytes.
// (The ideal is 12 and 24: reaching it needs k, v read once, i.e. a single-pass scan.)
// Registers (nvcc 13.0 -Xptxas -v, sm_90, float32/float16/bfloat16, no spills): fwd_carries 70,
// fwd_output 116-120, bwd_carries 56, bwd_output 128, scan_carries 56 / 78: every kernel fits two
// 256-thread blocks per SM. float64: fwd_output 202, bwd_output 230.
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>
#include <vector>

#include "bi_wkv_math.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kL = biwkv::kChunk;
constexpr unsigned kFull = 0xffffffffu;

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

struct Dims {
  int64_t B, T, C, N;  // N = number of chunks
};

__device__ __forceinline__ int chunk_len(const Dims& d, int64_t n) {
  const int64_t left = d.T - n * kL;
  return left < kL ? static_cast<int>(left) : kL;
}

// carry / state layout [B, N, C, 2, kSlots]: (left, right) sums of chunk n.
template <typename S>
__device__ __forceinline__ int64_t slot(const Dims& d, int64_t b, int64_t n, int64_t c) {
  return ((b * d.N + n) * d.C + c) * 2 * S::kSlots;
}

template <typename S>
__device__ __forceinline__ S shfl_up(const S& x, int off) {
  S r;
  r.a = __shfl_up_sync(kFull, x.a, off);
  r.n = __shfl_up_sync(kFull, x.n, off);
  for (int m = 0; m < 2; ++m) r.s[m] = __shfl_up_sync(kFull, x.s[m], off);
  for (int m = 0; m < int(sizeof(x.d) / sizeof(x.d[0])); ++m) r.d[m] = __shfl_up_sync(kFull, x.d[m], off);
  return r;
}
template <typename S>
__device__ __forceinline__ S shfl_from(const S& x, int lane) {
  S r;
  r.a = __shfl_sync(kFull, x.a, lane);
  r.n = __shfl_sync(kFull, x.n, lane);
  for (int m = 0; m < 2; ++m) r.s[m] = __shfl_sync(kFull, x.s[m], lane);
  for (int m = 0; m < int(sizeof(x.d) / sizeof(x.d[0])); ++m) r.d[m] = __shfl_sync(kFull, x.d[m], lane);
  return r;
}

// ---------------------------------------------------------------------------------------------
template <typename scalar_t>
__global__ void fwd_carries(const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                            const typename Acc<scalar_t>::type* __restrict__ w,
                            const typename Acc<scalar_t>::type* __restrict__ c0, Dims d,
                            typename Acc<scalar_t>::type* __restrict__ carry) {
  using A = typename Acc<scalar_t>::type;
  using S = biwkv::FwdSum<A>;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t o = (b * d.T + n * kL) * d.C + c;
    const A lam = -w[c];
    S l, r;
    biwkv::fwd_chunk_carry<A>(k + o, v + o, d.C, chunk_len(d, n), lam, c0[b * d.C + c], l, r);
    A* p = carry + slot<S>(d, b, n, c);
    l.store(p, lam);
    r.store(p + S::kSlots, lam);
  }
}

// One warp per (b, c): Kogge-Stone over 32 chunks at a time, then the run state across groups; S is the
// scan's float64 type, A the dtype of the carries in memory.
template <typename S, typename A>
__global__ void scan_carries(const A* __restrict__ carry, A* __restrict__ state, const A* __restrict__ w, Dims d) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  if (warp >= d.B * d.C) return;  // whole warps leave together (blockDim is a multiple of 32)
  const int64_t b = warp / d.C, c = warp % d.C;
  const double lam = -static_cast<double>(w[c]);
  for (int dir = 0; dir < 2; ++dir) {
    S run = S::empty();
    for (int64_t base = 0; base < d.N; base += biwkv::kWarp) {
      const int64_t pos = base + lane, n = dir == 0 ? pos : d.N - 1 - pos;
      const bool valid = pos < d.N;
      S x = valid ? S::load(carry + slot<S>(d, b, n, c) + dir * S::kSlots) : S::empty();
      for (int off = 1; off < biwkv::kWarp; off *= 2) {
        const S lower = shfl_up(x, off);
        if (lane >= off) x = biwkv::scan_combine(x, lower, off, lam);
      }
      const S prev = shfl_up(x, 1);
      const S e = biwkv::scan_exclusive(lane, prev, run, lam);
      if (valid) e.store(state + slot<S>(d, b, n, c) + dir * S::kSlots, lam);
      run = biwkv::scan_next_run(shfl_from(x, biwkv::kWarp - 1), run, lam);
    }
  }
}

template <typename scalar_t>
__global__ void fwd_output(const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                           const typename Acc<scalar_t>::type* __restrict__ w,
                           const typename Acc<scalar_t>::type* __restrict__ u,
                           const typename Acc<scalar_t>::type* __restrict__ c0, Dims d,
                           const typename Acc<scalar_t>::type* __restrict__ state, scalar_t* __restrict__ y,
                           typename Acc<scalar_t>::type* __restrict__ yc,
                           typename Acc<scalar_t>::type* __restrict__ lse) {
  using A = typename Acc<scalar_t>::type;
  using S = biwkv::FwdSum<A>;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t o = (b * d.T + n * kL) * d.C + c;
    const A* p = state + slot<S>(d, b, n, c);
    biwkv::fwd_chunk_output<A>(k + o, v + o, d.C, chunk_len(d, n), -w[c], u[c], c0[b * d.C + c], S::load(p),
                               S::load(p + S::kSlots), y + o, yc + o, lse + o);
  }
}

template <typename scalar_t>
__global__ void bwd_carries(const typename Acc<scalar_t>::type* __restrict__ yc,
                            const typename Acc<scalar_t>::type* __restrict__ lse, const scalar_t* __restrict__ gy,
                            const typename Acc<scalar_t>::type* __restrict__ w, Dims d,
                            typename Acc<scalar_t>::type* __restrict__ carry) {
  using A = typename Acc<scalar_t>::type;
  using S = biwkv::BwdSum<A>;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t o = (b * d.T + n * kL) * d.C + c;
    const A lam = -w[c];
    S l, r;
    biwkv::bwd_chunk_carry<A>(yc + o, lse + o, gy + o, d.C, chunk_len(d, n), lam, l, r);
    A* p = carry + slot<S>(d, b, n, c);
    l.store(p, lam);
    r.store(p + S::kSlots, lam);
  }
}

// dk, dv and per-chunk partial sums of du, dw ([B, N, C] each; summed in float64 afterwards, in a
// fixed order: deterministic).
template <typename scalar_t>
__global__ void bwd_output(const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                           const typename Acc<scalar_t>::type* __restrict__ yc,
                           const typename Acc<scalar_t>::type* __restrict__ lse, const scalar_t* __restrict__ gy,
                           const typename Acc<scalar_t>::type* __restrict__ w,
                           const typename Acc<scalar_t>::type* __restrict__ u,
                           const typename Acc<scalar_t>::type* __restrict__ c0, Dims d,
                           const typename Acc<scalar_t>::type* __restrict__ state, scalar_t* __restrict__ gk,
                           scalar_t* __restrict__ gv, typename Acc<scalar_t>::type* __restrict__ du_part,
                           typename Acc<scalar_t>::type* __restrict__ dw_part) {
  using A = typename Acc<scalar_t>::type;
  using S = biwkv::BwdSum<A>;
  const int64_t total = d.B * d.N * d.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % d.C, n = (idx / d.C) % d.N, b = idx / (d.C * d.N);
    const int64_t o = (b * d.T + n * kL) * d.C + c;
    const A* p = state + slot<S>(d, b, n, c);
    A du, dw;
    biwkv::bwd_chunk_output<A>(k + o, v + o, yc + o, lse + o, gy + o, d.C, chunk_len(d, n), -w[c], u[c],
                               c0[b * d.C + c], S::load(p), S::load(p + S::kSlots), gk + o, gv + o, du, dw);
    du_part[idx] = du;
    dw_part[idx] = dw;
  }
}

int blocks_for(int64_t threads_needed) {
  const int64_t b = (threads_needed + kThreads - 1) / kThreads;
  return (int)std::min<int64_t>(std::max<int64_t>(b, 1), 1 << 30);
}

void check(const torch::Tensor& w, const torch::Tensor& u, const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(k.is_cuda(), "bi_wkv_cuda: k must be a CUDA tensor");
  TORCH_CHECK(k.dim() == 3 && k.numel() > 0, "bi_wkv_cuda: k must be a non-empty [B, T, C] tensor");
  TORCH_CHECK(v.sizes() == k.sizes() && v.scalar_type() == k.scalar_type() && v.device() == k.device(),
              "bi_wkv_cuda: v must match k");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "bi_wkv_cuda: k and v must be contiguous");
  TORCH_CHECK(w.dim() == 1 && u.dim() == 1 && w.size(0) == k.size(2) && u.size(0) == k.size(2),
              "bi_wkv_cuda: w and u must be [C]");
}

torch::ScalarType acc_type(const torch::Tensor& k) {
  return k.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

}  // namespace

// Returns (y, yc, lse, c0): y in the dtype of k; the centred output y - c0, log den and the centring
// value c0 ([B, C]) in the accumulation dtype, for the backward.
std::vector<torch::Tensor> bi_wkv_forward(torch::Tensor w, torch::Tensor u, torch::Tensor k, torch::Tensor v) {
  check(w, u, k, v);
  const c10::cuda::CUDAGuard guard(k.device());
  const auto acc = acc_type(k);
  auto wf = w.to(acc).contiguous();
  auto uf = u.to(acc).contiguous();
  // [B, C]: the centring value of bi_wkv_math.cuh (the mean of v over the first chunk)
  auto c0 = v.narrow(1, 0, std::min<int64_t>(k.size(1), kL)).mean(1, false, acc).contiguous();
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  Dims d{B, T, C, (T + kL - 1) / kL};
  auto opts = k.options().dtype(acc);
  auto y = torch::empty_like(k);
  auto yc = torch::empty({B, T, C}, opts);
  auto lse = torch::empty({B, T, C}, opts);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t work = B * d.N * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), "bi_wkv_cuda_forward", [&] {
    using A = typename Acc<scalar_t>::type;
    using S = biwkv::FwdSum<A>;
    auto carry = torch::empty({B, d.N, C, 2, S::kSlots}, opts);
    auto state = torch::empty_like(carry);
    fwd_carries<scalar_t><<<blocks_for(work), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), wf.data_ptr<A>(), c0.data_ptr<A>(), d, carry.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scan_carries<typename biwkv::ScanOf<S>::type, A><<<blocks_for(B * C * 32), kThreads, 0, stream>>>(
        carry.data_ptr<A>(), state.data_ptr<A>(), wf.data_ptr<A>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fwd_output<scalar_t><<<blocks_for(work), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), wf.data_ptr<A>(), uf.data_ptr<A>(), c0.data_ptr<A>(), d,
        state.data_ptr<A>(), y.data_ptr<scalar_t>(), yc.data_ptr<A>(), lse.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, yc, lse, c0};
}

// Returns (gw, gu, gk, gv); gw and gu in the dtype of w.
std::vector<torch::Tensor> bi_wkv_backward(torch::Tensor w, torch::Tensor u, torch::Tensor k, torch::Tensor v,
                                           torch::Tensor yc, torch::Tensor lse, torch::Tensor c0, torch::Tensor gy) {
  check(w, u, k, v);
  const c10::cuda::CUDAGuard guard(k.device());
  const auto acc = acc_type(k);
  TORCH_CHECK(yc.sizes() == k.sizes() && lse.sizes() == k.sizes() && gy.sizes() == k.sizes(),
              "bi_wkv_cuda: yc, lse and gy must have the shape of k");
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == k.size(0) && c0.size(1) == k.size(2), "bi_wkv_cuda: c0 must be [B, C]");
  yc = yc.to(acc).contiguous();
  lse = lse.to(acc).contiguous();
  c0 = c0.to(acc).contiguous();
  gy = gy.to(k.scalar_type()).contiguous();
  auto wf = w.to(acc).contiguous();
  auto uf = u.to(acc).contiguous();
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  Dims d{B, T, C, (T + kL - 1) / kL};
  auto opts = k.options().dtype(acc);
  auto du_part = torch::empty({B, d.N, C}, opts);
  auto dw_part = torch::empty({B, d.N, C}, opts);
  auto gk = torch::empty_like(k);
  auto gv = torch::empty_like(k);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t work = B * d.N * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), "bi_wkv_cuda_backward", [&] {
    using A = typename Acc<scalar_t>::type;
    using S = biwkv::BwdSum<A>;
    auto carry = torch::empty({B, d.N, C, 2, S::kSlots}, opts);
    auto state = torch::empty_like(carry);
    bwd_carries<scalar_t><<<blocks_for(work), kThreads, 0, stream>>>(
        yc.data_ptr<A>(), lse.data_ptr<A>(), gy.data_ptr<scalar_t>(), wf.data_ptr<A>(), d, carry.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scan_carries<typename biwkv::ScanOf<S>::type, A><<<blocks_for(B * C * 32), kThreads, 0, stream>>>(
        carry.data_ptr<A>(), state.data_ptr<A>(), wf.data_ptr<A>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bwd_output<scalar_t><<<blocks_for(work), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), yc.data_ptr<A>(), lse.data_ptr<A>(), gy.data_ptr<scalar_t>(),
        wf.data_ptr<A>(), uf.data_ptr<A>(), c0.data_ptr<A>(), d, state.data_ptr<A>(), gk.data_ptr<scalar_t>(),
        gv.data_ptr<scalar_t>(), du_part.data_ptr<A>(), dw_part.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto gw = dw_part.sum({0, 1}, false, torch::kDouble).to(w.scalar_type());
  auto gu = du_part.sum({0, 1}, false, torch::kDouble).to(u.scalar_type());
  return {gw, gu, gk, gv};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Bi-WKV CUDA kernel (medurwkv_net)";
  m.def("forward", &bi_wkv_forward, "Bi-WKV forward: (w, u, k, v) -> (y, yc, lse, c0)");
  m.def("backward", &bi_wkv_backward,
        "Bi-WKV backward: (w, u, k, v, yc, lse, c0, gy) -> (gw, gu, gk, gv)");
}
