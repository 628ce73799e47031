// CPU harness of the CUDA kernel math: runs medurwkv_net/csrc/bi_wkv_math.cuh (the functions the
// CUDA kernels call, with their chunk size, and the warp scan emulated lane by lane) over a whole
// [B, T, C] problem, forward then backward, with float or double accumulation.
//
// Usage: cuda_math_harness IN OUT. IN: int64 precision (32 or 64), B, T, C; then float64 arrays
// w[C], u[C], k[B*T*C], v[B*T*C], gy[B*T*C]. OUT: float64 arrays y, yc, lse, gk, gv ([B*T*C] each),
// gw[C], gu[C].
#include <cstdint>
#include <cstdio>
#include <vector>

#include "bi_wkv_math.cuh"

namespace {

template <typename A>
std::vector<double> run(const std::vector<double>& in, int64_t B, int64_t T, int64_t C) {
  const int64_t n = B * T * C;
  std::vector<A> w(in.begin(), in.begin() + C), u(in.begin() + C, in.begin() + 2 * C);
  std::vector<A> k(in.begin() + 2 * C, in.begin() + 2 * C + n), v(in.begin() + 2 * C + n, in.begin() + 2 * C + 2 * n);
  std::vector<A> gy(in.begin() + 2 * C + 2 * n, in.begin() + 2 * C + 3 * n);
  std::vector<A> y(n), yc(n), lse(n), gk(n), gv(n);
  std::vector<double> gw(C, 0.0), gu(C, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t o = b * T * C + c;
      const A c0 = biwkv::centre<A>(&v[o], C, T);
      biwkv::host_forward<A>(&k[o], &v[o], T, C, w[c], u[c], c0, &y[o], &yc[o], &lse[o]);
      double du = 0.0, dw = 0.0;
      biwkv::host_backward<A>(&k[o], &v[o], &yc[o], &lse[o], &gy[o], T, C, w[c], u[c], c0, &gk[o], &gv[o], du, dw);
      gu[c] += du;
      gw[c] += dw;
    }
  }
  std::vector<double> out;
  for (const auto* x : {&y, &yc, &lse, &gk, &gv}) out.insert(out.end(), x->begin(), x->end());
  out.insert(out.end(), gw.begin(), gw.end());
  out.insert(out.end(), gu.begin(), gu.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  std::FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 3;
  int64_t head[4];
  if (std::fread(head, sizeof(int64_t), 4, f) != 4) return 4;
  const int64_t prec = head[0], B = head[1], T = head[2], C = head[3];
  std::vector<double> in(2 * C + 3 * B * T * C);
  if (std::fread(in.data(), sizeof(double), in.size(), f) != in.size()) return 5;
  std::fclose(f);
  const std::vector<double> out = prec == 32 ? run<float>(in, B, T, C) : run<double>(in, B, T, C);
  std::FILE* g = std::fopen(argv[2], "wb");
  if (!g || std::fwrite(out.data(), sizeof(double), out.size(), g) != out.size()) return 6;
  std::fclose(g);
  return 0;
}
