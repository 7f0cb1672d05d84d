// CUDA kernel of _conv_weight_grad_norms (torch-free): per-sample weight
// gradients of a 2-D convolution, W = G A^T per sample and group, as an
// implicit GEMM over the output positions T (A, the input's patches, is
// gathered tile by tile into shared memory, never formed whole), and their
// squared norms. Specification: modelsec_fast/reference.py
// (conv_weight_grad_norms); the CPU kernel is csrc/cpu/conv_grad_isa.cpp.
#include "cuda_common.cuh"
#include "launchers.h"

namespace msf::cuda {
namespace {

constexpr int kTile = 32;   // W tile: kTile output channels x kTile patch entries
constexpr int kStep = 16;   // output positions per shared-memory stage
constexpr int kSide = 16;   // threads per tile side; each thread owns 2 x 2 entries
constexpr int64_t kMaxItems = 65535;  // blocks along grid z per launch
static_assert(kSide * kSide == kThreads, "block_sum reduces over kThreads threads");

// One block per (sample and group, channel tile, patch tile): sums its tile of W
// over T in order, writes it to out (if any) and its sum of squares to partial.
__global__ void conv_weight_grad_kernel(const float* x, const float* g, ConvGeometry geo,
                                        int64_t item0, int64_t p_tiles, int64_t d_tiles,
                                        float* out, float* partial) {
  __shared__ float gs[kTile][kStep + 1];
  __shared__ float as[kTile][kStep + 1];
  const int64_t item = item0 + blockIdx.z;  // sample * groups + group
  const int64_t p0 = int64_t(blockIdx.x) * kTile, d0 = int64_t(blockIdx.y) * kTile;
  const int64_t steps = geo.oh * geo.ow, taps = geo.kh * geo.kw, d = geo.c_in * taps;
  const float* xi = x + item * geo.c_in * geo.h * geo.w;
  const float* gi = g + item * geo.c_out * steps;
  const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;  // a 1-D block (block_sum)
  float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
  for (int64_t t0 = 0; t0 < steps; t0 += kStep) {
    // 256 threads fill 32 x 16 entries of each operand, two each.
    for (int e = tid; e < kTile * kStep; e += kSide * kSide) {
      const int row = e / kStep, q = e % kStep;
      const int64_t t = t0 + q;
      const int64_t o = p0 + row, j = d0 + row;
      gs[row][q] = (o < geo.c_out && t < steps) ? gi[o * steps + t] : 0.0f;
      float v = 0.0f;
      if (j < d && t < steps) {
        const int64_t oh = t / geo.ow, ow = t % geo.ow;
        const int64_t ih = oh * geo.sh + (j % taps) / geo.kw * geo.dh - geo.ph;
        const int64_t iw = ow * geo.sw + j % geo.kw * geo.dw - geo.pw;
        if (ih >= 0 && ih < geo.h && iw >= 0 && iw < geo.w)
          v = xi[(j / taps) * geo.h * geo.w + ih * geo.w + iw];
      }
      as[row][q] = v;
    }
    __syncthreads();
    for (int q = 0; q < kStep; ++q)
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) acc[a][b] += gs[ty + a * kSide][q] * as[tx + b * kSide][q];
    __syncthreads();
  }
  float sq = 0.0f;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int64_t o = p0 + ty + a * kSide, j = d0 + tx + b * kSide;
      if (o < geo.c_out && j < d) {  // outside W the entries are exact zeros
        sq += acc[a][b] * acc[a][b];
        if (out != nullptr) out[(item * geo.c_out + o) * d + j] = acc[a][b];
      }
    }
  sq = block_sum(sq);
  if (tid == 0) partial[(item * p_tiles + blockIdx.x) * d_tiles + blockIdx.y] = sq;
}

// sq[i] = sum over its groups' tiles of partial, in order (double accumulation).
__global__ void sum_partials_kernel(const float* partial, int64_t per_sample, int64_t B,
                                    float* sq) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < B;
       i += int64_t(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t k = 0; k < per_sample; ++k) s += double(partial[i * per_sample + k]);
    sq[i] = float(s);
  }
}

}  // namespace

int64_t conv_grad_partials(const ConvGeometry& geo) {
  const int64_t d = geo.c_in * geo.kh * geo.kw;
  return ((geo.c_out + kTile - 1) / kTile) * ((d + kTile - 1) / kTile);
}

const char* launch_conv_weight_grad(const float* x, const float* g, const ConvGeometry& geo,
                                    int64_t B, int64_t groups, float* out, float* partial,
                                    float* sq, void* stream) {
  const int64_t d = geo.c_in * geo.kh * geo.kw;
  const int64_t p_tiles = (geo.c_out + kTile - 1) / kTile, d_tiles = (d + kTile - 1) / kTile;
  auto s = static_cast<cudaStream_t>(stream);
  if (p_tiles > 0 && d_tiles > 0)
    for (int64_t item0 = 0; item0 < B * groups; item0 += kMaxItems) {
      const int64_t items = B * groups - item0 < kMaxItems ? B * groups - item0 : kMaxItems;
      const dim3 grid{unsigned(p_tiles), unsigned(d_tiles), unsigned(items)};
      conv_weight_grad_kernel<<<grid, kThreads, 0, s>>>(x, g, geo, item0, p_tiles, d_tiles, out,
                                                        partial);
      if (const char* err = launch_status()) return err;
    }
  if (B > 0) {
    sum_partials_kernel<<<grid_for(B), kThreads, 0, s>>>(partial, groups * p_tiles * d_tiles, B,
                                                         sq);
  }
  return launch_status();
}

}  // namespace msf::cuda
