// Bi-WKV CUDA kernel: O(T) forward and backward, any B, T, C (no T_MAX), float32 / float16 /
// bfloat16 / float64 inputs read and written in their own dtype, float32 accumulation (float64 for
// float64 inputs and for the chunk scan). The math (log-scaled sums with a running maximum, centred values,
// chunk carries, the per-lane steps of the chunk scan, the gradient formulas) lives in bi_wkv_math.cuh,
// which the CPU tests compile and run as host code; this file holds only the launches, the shuffles and the
// hand-over between tiles.
//
// Single pass over memory. A block owns a tile: biwkv::kTile tokens (32 chunks of 16) of kTileC = 8
// channels of one batch row, copied once into shared memory; one thread per (chunk, channel). On the tile,
// without touching global memory again: (1) the chunks' carries, (2) the warp scan of the carries (warp w:
// channel w, lane: chunk), whose last lane is the tile's aggregate, (3) the chunk outputs. The tiles of a
// row hand their aggregates to each other in global memory (a few float64 per tile and channel):
//   - a block publishes its tile's aggregates (flag 1) before it waits for anything;
//   - the state entering tile i of a direction's chain is run_i = scan_next_run(agg_{i-1}, run_{i-1}). The
//     block walks back to the nearest tile whose run is published (flag 2), or to the chain's start, and
//     chains forward from there over the published aggregates; it then publishes its own run (flag 2).
//     Every run is the value of that one chain, whoever computes it: results do not depend on timing.
// Blocks take tiles in row order from an atomic counter and the launch is cooperative (all blocks resident),
// so a block only ever waits for tiles that resident blocks hold or will take next: no deadlock as long
// as a row has no more tiles than the resident blocks (checked at launch). The backward recomputes y' and
// lse in the same way (a forward round on the tile in shared memory) before its own round: the forward
// stores nothing but y.
//
// Bytes moved per element (float32), counted:
//   forward : k, v read once (8) + y written (4) = 12. Hand-over per tile and channel (512 elements): 2
//             directions x (aggregate + run) x 4 float64 written = 128 B = 0.25 B per element; read: per
//             direction a run and the aggregates back to it (usually 1-2 tiles: 64-96 B) = about 0.3.
//             c0: 16 tokens of v per (b, c), negligible. Total about 12.6 bytes (target 16; the walk back
//             could read 30 tiles' aggregates per direction before reaching it).
//   backward: k, v, dy read once (12) + dk, dv written (8) = 20; du, dw partials 2 x 4 B per chunk of 16
//             = 0.5; hand-over of two rounds (4 and 6 float64 per sum) about 0.6 written + 0.8 read.
//             Total about 21.9 bytes (target 32). dw, du are summed from the partials afterwards, in a
//             fixed order (deterministic).
// Shared memory per block (float32): forward 2 x 17 KiB (k, v) + 6 KiB (carries, then states) = 40 KiB;
// backward 5 x 17 KiB (k, v, dy, y', lse) + 10 KiB = 95 KiB; two blocks fit an sm_90 SM (float64: 80, 190).
// When a tile does not fit the device (shared memory) or a row has more tiles than resident blocks, the
// kernels fall back to three passes per direction-scan (chunk carries, one warp per (b, c) scanning them,
// chunk outputs; 34 and about 85 bytes per element, the backward recomputing the forward's y' and lse).
//
// Registers (nvcc 13.0 -Xptxas -v, sm_90; float32, float16, bfloat16): fwd_tiles 104, bwd_tiles 128 (8-12
// bytes of spill), fallback fwd_carries 70, scan_carries 60 / 80, fwd_output 122-123, bwd_carries 56,
// bwd_output 128: two 256-thread blocks per SM. float64 (launch bounds of one block: its backward tile needs
// 190 KiB of shared memory): fwd_tiles 188, bwd_tiles 250, fwd_output 206, bwd_output 230.
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <tuple>
#include <vector>

#include "bi_wkv_math.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kL = biwkv::kChunk;
constexpr int kW = biwkv::kWarp;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kTileC = kThreads / kW;          // channels per tile: one warp per channel in the scan
constexpr int kChunkPitch = kL * kTileC + kTileC;  // shared-memory elements per chunk (padded: no bank conflicts)
constexpr int kTileElems = kW * kChunkPitch;      // shared-memory elements per tile array
static_assert(kTileC == 8, "a tile is 8 channels (32-byte float32 segments)");

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
// Blocks per SM the tile kernels are built for: two (registers <= 128); float64 tiles need 1 block's worth
// of shared memory per SM anyway, so their registers are not capped (no spills).
template <typename T>
struct TileBlocks {
  static constexpr int value = 2;
};
template <>
struct TileBlocks<double> {
  static constexpr int value = 1;
};

struct Dims {
  int64_t B, T, C, N;  // N = number of chunks
};

__host__ __device__ __forceinline__ int chunk_len(const Dims& d, int64_t n) {
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
// Single-pass tile kernels.

// Flags between blocks: release after the data, acquire before reading it.
__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Where a tile is and what it hands to the other tiles of its row. agg / run: [rows, n_tiles, 2, kTileC,
// S::kRaw] float64 (the aggregate of the tile and the state entering it, per direction and channel);
// flag: [rows, n_tiles, 2] (1: aggregate published, 2: run published too).
struct Tile {
  int64_t row, i, n_tiles, b, c0;  // c0: first channel
  int ch, jl;                      // this thread: channel in the tile, chunk in the tile
  int64_t n;                       // this thread's chunk in the row
  int len;                         // its tokens (<= 0 past the end)
  bool valid;                      // a real channel and chunk
};

__device__ __forceinline__ Tile locate(const Dims& d, int64_t tile) {
  Tile t;
  t.n_tiles = (d.N + kW - 1) / kW;
  t.row = tile / t.n_tiles;
  t.i = tile % t.n_tiles;
  const int64_t groups = (d.C + kTileC - 1) / kTileC;
  t.b = t.row / groups;
  t.c0 = (t.row % groups) * kTileC;
  t.ch = threadIdx.x % kTileC;
  t.jl = threadIdx.x / kTileC;
  t.n = t.i * kW + t.jl;
  t.len = chunk_len(d, t.n);
  t.valid = t.len > 0 && t.c0 + t.ch < d.C;
  return t;
}

// A [B, T, C] array's tile into shared memory ([chunk][token][channel], chunks kChunkPitch apart); zeros
// past the end. Coalesced: consecutive threads read consecutive channels.
template <typename T, typename P>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, const Dims& d, const Tile& t, P* dst) {
  for (int e = threadIdx.x; e < biwkv::kTile * kTileC; e += kThreads) {
    const int tok = e / kTileC, ch = e % kTileC;
    const int64_t tt = t.i * biwkv::kTile + tok, c = t.c0 + ch;
    const bool in = tt < d.T && c < d.C;
    dst[(tok / kL) * kChunkPitch + (tok % kL) * kTileC + ch] = in ? static_cast<P>(src[(t.b * d.T + tt) * d.C + c]) : P(0);
  }
}

// This thread's chunk in a shared-memory tile array (tokens kTileC apart).
__device__ __forceinline__ int at(const Tile& t) { return t.jl * kChunkPitch + t.ch; }
// Carry / state slot of (direction, channel, chunk) in shared memory.
template <typename S>
__device__ __forceinline__ int sslot(int dir, int ch, int jl) {
  return ((dir * kTileC + ch) * kW + jl) * S::kSlots;
}
__device__ __forceinline__ int64_t hslot(const Tile& t, int64_t tile_i, int dir, int ch, int raw) {
  return (((t.row * t.n_tiles + tile_i) * 2 + dir) * kTileC + ch) * raw;
}

// Phase 2 on a tile: carries (shared, accumulation dtype, left and right of every chunk) in, exclusive
// states out (same slots; the carries are consumed first). Warp w scans channel w; lam[w] its -w.
template <typename S, typename A>
__device__ void tile_scan(A* cs, const Tile& t, const double lam_w, double* __restrict__ agg,
                          double* __restrict__ run_out, int* __restrict__ flag) {
  using SS = typename biwkv::ScanOf<S>::type;
  const int lane = threadIdx.x % kW, w = threadIdx.x / kW;
  SS x[2], prev[2];
#pragma unroll
  for (int dir = 0; dir < 2; ++dir) {
    const int jl = static_cast<int>(biwkv::lane_chunk(0, lane, dir));
    x[dir] = SS::load(cs + sslot<S>(dir, w, jl));  // empty sums past the end
    for (int off = 1; off < kW; off *= 2) {
      const SS lower = shfl_up(x[dir], off);
      if (lane >= off) x[dir] = biwkv::scan_combine(x[dir], lower, off, lam_w);
    }
    prev[dir] = shfl_up(x[dir], 1);
    if (lane == kW - 1) x[dir].save_raw(agg + hslot(t, t.i, dir, w, SS::kRaw));
  }
  __threadfence();
  __syncthreads();  // every warp has read its carries and written its aggregates
  if (threadIdx.x < 2) st_release(flag + (t.row * t.n_tiles + t.i) * 2 + threadIdx.x, 1);
#pragma unroll
  for (int dir = 0; dir < 2; ++dir) {
    SS run = SS::empty();
    if (lane == 0) {
      const int64_t q_me = dir == 0 ? t.i : t.n_tiles - 1 - t.i;  // my place in the chain
      int64_t q = q_me - 1;
      for (; q >= 0; --q) {  // back to the nearest published run
        const int* f = flag + (t.row * t.n_tiles + biwkv::tile_at(q, t.n_tiles, dir)) * 2 + dir;
        int v;
        while ((v = ld_acquire(f)) == 0) __nanosleep(64);
        if (v == 2) break;
      }
      double buf[SS::kRaw];
      if (q >= 0) {
        const double* r = run_out + hslot(t, biwkv::tile_at(q, t.n_tiles, dir), dir, w, SS::kRaw);
#pragma unroll
        for (int m = 0; m < SS::kRaw; ++m) buf[m] = __ldcg(r + m);
        run = SS::load_raw(buf);
      }
      for (int64_t m = q < 0 ? 0 : q; m < q_me; ++m) {  // chain forward over the aggregates
        const double* g = agg + hslot(t, biwkv::tile_at(m, t.n_tiles, dir), dir, w, SS::kRaw);
#pragma unroll
        for (int s = 0; s < SS::kRaw; ++s) buf[s] = __ldcg(g + s);
        run = biwkv::scan_next_run(SS::load_raw(buf), run, lam_w);
      }
      run.save_raw(run_out + hslot(t, t.i, dir, w, SS::kRaw));
    }
    run = shfl_from(run, 0);
    const SS e = biwkv::scan_exclusive(lane, prev[dir], run, lam_w);
    e.store(cs + sslot<S>(dir, w, static_cast<int>(biwkv::lane_chunk(0, lane, dir))), lam_w);
  }
  __threadfence();
  __syncthreads();  // states in shared memory; runs written
  if (threadIdx.x < 2) st_release(flag + (t.row * t.n_tiles + t.i) * 2 + threadIdx.x, 2);
}

template <typename A>
__device__ __forceinline__ double warp_lam(const Tile& t, const Dims& d, const A* w) {
  const int64_t c = t.c0 + threadIdx.x / kW;
  return c < d.C ? -static_cast<double>(w[c]) : 0.0;
}

// Forward round on a tile in shared memory: carries, scan, outputs (y to global memory when y is not null,
// y' and lse to shared memory when yc is not null).
template <typename scalar_t, typename A>
__device__ void fwd_round(const scalar_t* sk, const scalar_t* sv, A* cs, const Tile& t, const Dims& d,
                          const A* __restrict__ w, const A* __restrict__ u, const A* __restrict__ c0,
                          double* agg, double* run, int* flag, scalar_t* __restrict__ y, A* syc, A* slse) {
  using S = biwkv::FwdSum<A>;
  const int64_t c = t.c0 + t.ch;
  const A lam = t.valid ? -w[c] : A(0);
  const A cc = t.valid ? c0[t.b * d.C + c] : A(0);
  S l, r;
  biwkv::fwd_chunk_carry<A>(sk + at(t), sv + at(t), kTileC, t.valid ? t.len : 0, lam, cc, l, r);
  l.store(cs + sslot<S>(0, t.ch, t.jl), lam);
  r.store(cs + sslot<S>(1, t.ch, t.jl), lam);
  __syncthreads();
  tile_scan<S, A>(cs, t, warp_lam(t, d, w), agg, run, flag);
  if (t.valid) {
    scalar_t* yo = y ? y + (t.b * d.T + t.n * kL) * d.C + c : nullptr;
    biwkv::fwd_chunk_output<A>(sk + at(t), sv + at(t), kTileC, t.len, lam, u[c], cc,
                               S::load(cs + sslot<S>(0, t.ch, t.jl)), S::load(cs + sslot<S>(1, t.ch, t.jl)), yo,
                               syc ? syc + at(t) : nullptr, slse ? slse + at(t) : nullptr, y ? d.C : kTileC);
  }
}

template <typename scalar_t>
struct FwdSmem {
  using A = typename Acc<scalar_t>::type;
  static constexpr size_t bytes = 2 * kTileElems * sizeof(scalar_t) + 2 * kThreads * biwkv::FwdSum<A>::kSlots * sizeof(A);
};
template <typename scalar_t>
struct BwdSmem {
  using A = typename Acc<scalar_t>::type;
  static constexpr size_t bytes = 3 * kTileElems * sizeof(scalar_t) + 2 * kTileElems * sizeof(A) +
                                  2 * kThreads * biwkv::BwdSum<A>::kSlots * sizeof(A);
};

// Grabs tiles in row order until none is left.
__device__ __forceinline__ int64_t next_tile(unsigned long long* counter) {
  __shared__ int64_t tile;
  __syncthreads();  // the previous tile's shared memory is no longer read
  if (threadIdx.x == 0) tile = static_cast<int64_t>(atomicAdd(counter, 1ull));
  __syncthreads();
  return tile;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, TileBlocks<scalar_t>::value)
    fwd_tiles(const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
              const typename Acc<scalar_t>::type* __restrict__ w, const typename Acc<scalar_t>::type* __restrict__ u,
              const typename Acc<scalar_t>::type* __restrict__ c0, Dims d, int64_t n_all,
              unsigned long long* counter, double* agg, double* run, int* flag, scalar_t* __restrict__ y) {
  using A = typename Acc<scalar_t>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  scalar_t* sk = reinterpret_cast<scalar_t*>(smem);
  scalar_t* sv = sk + kTileElems;
  A* cs = reinterpret_cast<A*>(sv + kTileElems);
  for (int64_t tile = next_tile(counter); tile < n_all; tile = next_tile(counter)) {
    const Tile t = locate(d, tile);
    load_tile(k, d, t, sk);
    load_tile(v, d, t, sv);
    __syncthreads();
    fwd_round<scalar_t, A>(sk, sv, cs, t, d, w, u, c0, agg, run, flag, y, nullptr, nullptr);
  }
}

// dk, dv and per-chunk partial sums of du, dw ([B, N, C] each; summed in float64 afterwards, in a fixed
// order: deterministic). Hand-over arrays: *_f for the forward round, *_b for the backward one.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, TileBlocks<scalar_t>::value)
    bwd_tiles(const scalar_t* __restrict__ k, const scalar_t* __restrict__ v, const scalar_t* __restrict__ gy,
              const typename Acc<scalar_t>::type* __restrict__ w, const typename Acc<scalar_t>::type* __restrict__ u,
              const typename Acc<scalar_t>::type* __restrict__ c0, Dims d, int64_t n_all,
              unsigned long long* counter, double* agg_f, double* run_f, int* flag_f, double* agg_b, double* run_b,
              int* flag_b, scalar_t* __restrict__ gk, scalar_t* __restrict__ gv,
              typename Acc<scalar_t>::type* __restrict__ du_part, typename Acc<scalar_t>::type* __restrict__ dw_part) {
  using A = typename Acc<scalar_t>::type;
  using S = biwkv::BwdSum<A>;
  extern __shared__ __align__(16) unsigned char smem[];
  scalar_t* sk = reinterpret_cast<scalar_t*>(smem);
  scalar_t* sv = sk + kTileElems;
  scalar_t* sg = sv + kTileElems;
  A* syc = reinterpret_cast<A*>(sg + kTileElems);
  A* slse = syc + kTileElems;
  A* cs = slse + kTileElems;
  for (int64_t tile = next_tile(counter); tile < n_all; tile = next_tile(counter)) {
    const Tile t = locate(d, tile);
    load_tile(k, d, t, sk);
    load_tile(v, d, t, sv);
    load_tile(gy, d, t, sg);
    __syncthreads();
    fwd_round<scalar_t, A>(sk, sv, cs, t, d, w, u, c0, agg_f, run_f, flag_f, nullptr, syc, slse);
    __syncthreads();  // y', lse of every chunk in shared memory; the forward states are consumed
    const int64_t c = t.c0 + t.ch;
    const A lam = t.valid ? -w[c] : A(0);
    S l, r;
    biwkv::bwd_chunk_carry<A>(syc + at(t), slse + at(t), sg + at(t), kTileC, t.valid ? t.len : 0, lam, l, r);
    l.store(cs + sslot<S>(0, t.ch, t.jl), lam);
    r.store(cs + sslot<S>(1, t.ch, t.jl), lam);
    __syncthreads();
    tile_scan<S, A>(cs, t, warp_lam(t, d, w), agg_b, run_b, flag_b);
    if (t.valid) {
      const int64_t o = (t.b * d.T + t.n * kL) * d.C + c;
      A du, dw;
      biwkv::bwd_chunk_output<A>(sk + at(t), sv + at(t), syc + at(t), slse + at(t), sg + at(t), kTileC, t.len, lam,
                                 u[c], c0[t.b * d.C + c], S::load(cs + sslot<S>(0, t.ch, t.jl)),
                                 S::load(cs + sslot<S>(1, t.ch, t.jl)), gk + o, gv + o, d.C, du, dw);
      const int64_t pidx = (t.b * d.N + t.n) * d.C + c;
      du_part[pidx] = du;
      dw_part[pidx] = dw;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Three-pass kernels (the fallback): one thread per (b, chunk, c), carries and states in global memory.
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

// One warp per (b, c): per tile of 32 chunks a Kogge-Stone over the lanes, then the state chained over the
// tiles (as host_scan); S is the scan's float64 type, A the dtype of the carries in memory.
template <typename S, typename A>
__global__ void scan_carries(const A* __restrict__ carry, A* __restrict__ state, const A* __restrict__ w, Dims d) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  if (warp >= d.B * d.C) return;  // whole warps leave together (blockDim is a multiple of 32)
  const int64_t b = warp / d.C, c = warp % d.C;
  const double lam = -static_cast<double>(w[c]);
  const int64_t n_tiles = (d.N + kW - 1) / kW;
  for (int dir = 0; dir < 2; ++dir) {
    S run = S::empty();
    for (int64_t q = 0; q < n_tiles; ++q) {
      const int64_t n = biwkv::lane_chunk(biwkv::tile_at(q, n_tiles, dir), lane, dir);
      const bool valid = n < d.N;
      S x = valid ? S::load(carry + slot<S>(d, b, n, c) + dir * S::kSlots) : S::empty();
      for (int off = 1; off < kW; off *= 2) {
        const S lower = shfl_up(x, off);
        if (lane >= off) x = biwkv::scan_combine(x, lower, off, lam);
      }
      const S prev = shfl_up(x, 1);
      const S e = biwkv::scan_exclusive(lane, prev, run, lam);
      if (valid) e.store(state + slot<S>(d, b, n, c) + dir * S::kSlots, lam);
      run = biwkv::scan_next_run(shfl_from(x, kW - 1), run, lam);
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
                               S::load(p + S::kSlots), y ? y + o : nullptr, yc + o, lse + o, d.C);
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
                               c0[b * d.C + c], S::load(p), S::load(p + S::kSlots), gk + o, gv + o, d.C, du, dw);
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

// The single-pass launch for `n_all` tiles of `n_tiles` per row: its grid, or 0 when the tile does not fit
// the device or a row has more tiles than resident blocks (the caller then runs the three-pass kernels).
// Host queries only (no device synchronisation).
int tile_grid(const void* kernel, size_t smem, int64_t n_tiles, int64_t n_all) {
  int dev = 0, coop = 0, smem_max = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (!coop || smem > static_cast<size_t>(smem_max)) return 0;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  const int64_t resident = static_cast<int64_t>(per_sm) * sms;
  if (per_sm < 1 || n_tiles > resident) return 0;
  return static_cast<int>(std::min<int64_t>(resident, n_all));
}

// Hand-over buffers of the tile kernels: aggregates and runs (float64) for `rounds` rounds, flags and the
// tile counter zeroed (one memset on the stream).
struct HandOver {
  torch::Tensor agg, run, flags;
  HandOver(const torch::Tensor& k, int64_t rows, int64_t n_tiles, int raw, int rounds) {
    auto f64 = k.options().dtype(torch::kDouble);
    agg = torch::empty({rounds, rows, n_tiles, 2, kTileC, raw}, f64);
    run = torch::empty_like(agg);
    flags = torch::zeros({rounds * rows * n_tiles * 2 + 2}, k.options().dtype(torch::kInt));
  }
  double* agg_at(int r) { return agg[r].data_ptr<double>(); }
  double* run_at(int r) { return run[r].data_ptr<double>(); }
  int* flag_at(int r) { return flags.data_ptr<int>() + r * (flags.numel() - 2) / agg.size(0); }
  unsigned long long* counter() {
    return reinterpret_cast<unsigned long long*>(flags.data_ptr<int>() + flags.numel() - 2);
  }
};

// Three-pass forward into y (may be null), yc and lse.
template <typename scalar_t>
void forward_three_pass(const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& wf,
                        const torch::Tensor& uf, const torch::Tensor& c0, const Dims& d, scalar_t* y,
                        torch::Tensor& yc, torch::Tensor& lse, cudaStream_t stream) {
  using A = typename Acc<scalar_t>::type;
  using S = biwkv::FwdSum<A>;
  const int64_t work = d.B * d.N * d.C;
  auto carry = torch::empty({d.B, d.N, d.C, 2, S::kSlots}, yc.options());
  auto state = torch::empty_like(carry);
  fwd_carries<scalar_t><<<blocks_for(work), kThreads, 0, stream>>>(
      k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), wf.data_ptr<A>(), c0.data_ptr<A>(), d, carry.data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  scan_carries<typename biwkv::ScanOf<S>::type, A><<<blocks_for(d.B * d.C * 32), kThreads, 0, stream>>>(
      carry.data_ptr<A>(), state.data_ptr<A>(), wf.data_ptr<A>(), d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  fwd_output<scalar_t><<<blocks_for(work), kThreads, 0, stream>>>(
      k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), wf.data_ptr<A>(), uf.data_ptr<A>(), c0.data_ptr<A>(), d,
      state.data_ptr<A>(), y, yc.data_ptr<A>(), lse.data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// Returns (y, yc, lse, c0): y in the dtype of k; yc and lse empty (the backward recomputes them on its
// tiles); the centring value c0 ([B, C]) in the accumulation dtype.
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
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n_tiles = (d.N + kW - 1) / kW, rows = B * ((C + kTileC - 1) / kTileC), n_all = rows * n_tiles;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), "bi_wkv_cuda_forward", [&] {
    using A = typename Acc<scalar_t>::type;
    const size_t smem = FwdSmem<scalar_t>::bytes;
    const int grid = tile_grid(reinterpret_cast<const void*>(&fwd_tiles<scalar_t>), smem, n_tiles, n_all);
    if (grid > 0) {
      HandOver h(k, rows, n_tiles, biwkv::ScanOf<biwkv::FwdSum<A>>::type::kRaw, 1);
      const scalar_t* kp = k.data_ptr<scalar_t>();
      const scalar_t* vp = v.data_ptr<scalar_t>();
      const A* wp = wf.data_ptr<A>();
      const A* up = uf.data_ptr<A>();
      const A* cp = c0.data_ptr<A>();
      unsigned long long* counter = h.counter();
      double* agg = h.agg_at(0);
      double* run = h.run_at(0);
      int* flag = h.flag_at(0);
      scalar_t* yp = y.data_ptr<scalar_t>();
      void* args[] = {&kp, &vp, &wp, &up, &cp, &d, const_cast<int64_t*>(&n_all), &counter, &agg, &run, &flag, &yp};
      C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&fwd_tiles<scalar_t>), grid, kThreads,
                                                 args, smem, stream));
    } else {
      auto yc = torch::empty({B, T, C}, opts);
      auto lse = torch::empty({B, T, C}, opts);
      forward_three_pass<scalar_t>(k, v, wf, uf, c0, d, y.data_ptr<scalar_t>(), yc, lse, stream);
    }
  });
  auto none = torch::empty({0}, opts);
  return {y, none, none, c0};
}

// Returns (gw, gu, gk, gv); gw and gu in the dtype of w. yc and lse are not used (recomputed).
std::vector<torch::Tensor> bi_wkv_backward(torch::Tensor w, torch::Tensor u, torch::Tensor k, torch::Tensor v,
                                           torch::Tensor yc, torch::Tensor lse, torch::Tensor c0, torch::Tensor gy) {
  check(w, u, k, v);
  const c10::cuda::CUDAGuard guard(k.device());
  const auto acc = acc_type(k);
  (void)yc;
  (void)lse;
  TORCH_CHECK(gy.sizes() == k.sizes(), "bi_wkv_cuda: gy must have the shape of k");
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == k.size(0) && c0.size(1) == k.size(2), "bi_wkv_cuda: c0 must be [B, C]");
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
  const int64_t n_tiles = (d.N + kW - 1) / kW, rows = B * ((C + kTileC - 1) / kTileC), n_all = rows * n_tiles;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), "bi_wkv_cuda_backward", [&] {
    using A = typename Acc<scalar_t>::type;
    using S = biwkv::BwdSum<A>;
    const size_t smem = BwdSmem<scalar_t>::bytes;
    const int grid = tile_grid(reinterpret_cast<const void*>(&bwd_tiles<scalar_t>), smem, n_tiles, n_all);
    if (grid > 0) {
      static_assert(biwkv::ScanOf<biwkv::BwdSum<A>>::type::kRaw >= biwkv::ScanOf<biwkv::FwdSum<A>>::type::kRaw,
                    "hand-over slots");
      HandOver h(k, rows, n_tiles, biwkv::ScanOf<S>::type::kRaw, 2);
      const scalar_t* kp = k.data_ptr<scalar_t>();
      const scalar_t* vp = v.data_ptr<scalar_t>();
      const scalar_t* gp = gy.data_ptr<scalar_t>();
      const A* wp = wf.data_ptr<A>();
      const A* up = uf.data_ptr<A>();
      const A* cp = c0.data_ptr<A>();
      unsigned long long* counter = h.counter();
      double* agg_f = h.agg_at(0);
      double* run_f = h.run_at(0);
      int* flag_f = h.flag_at(0);
      double* agg_b = h.agg_at(1);
      double* run_b = h.run_at(1);
      int* flag_b = h.flag_at(1);
      scalar_t* gkp = gk.data_ptr<scalar_t>();
      scalar_t* gvp = gv.data_ptr<scalar_t>();
      A* dup = du_part.data_ptr<A>();
      A* dwp = dw_part.data_ptr<A>();
      void* args[] = {&kp,     &vp,    &gp,    &wp,    &up,   &cp,   &d,    const_cast<int64_t*>(&n_all),
                      &counter, &agg_f, &run_f, &flag_f, &agg_b, &run_b, &flag_b, &gkp, &gvp, &dup, &dwp};
      C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&bwd_tiles<scalar_t>), grid, kThreads,
                                                 args, smem, stream));
    } else {
      auto ycf = torch::empty({B, T, C}, opts);
      auto lsef = torch::empty({B, T, C}, opts);
      forward_three_pass<scalar_t>(k, v, wf, uf, c0, d, nullptr, ycf, lsef, stream);
      auto carry = torch::empty({B, d.N, C, 2, S::kSlots}, opts);
      auto state = torch::empty_like(carry);
      bwd_carries<scalar_t><<<blocks_for(work), kThreads, 0, stream>>>(
          ycf.data_ptr<A>(), lsef.data_ptr<A>(), gy.data_ptr<scalar_t>(), wf.data_ptr<A>(), d, carry.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      scan_carries<typename biwkv::ScanOf<S>::type, A><<<blocks_for(B * C * 32), kThreads, 0, stream>>>(
          carry.data_ptr<A>(), state.data_ptr<A>(), wf.data_ptr<A>(), d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bwd_output<scalar_t><<<blocks_for(work), kThreads, 0, stream>>>(
          k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), ycf.data_ptr<A>(), lsef.data_ptr<A>(), gy.data_ptr<scalar_t>(),
          wf.data_ptr<A>(), uf.data_ptr<A>(), c0.data_ptr<A>(), d, state.data_ptr<A>(), gk.data_ptr<scalar_t>(),
          gv.data_ptr<scalar_t>(), du_part.data_ptr<A>(), dw_part.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
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
