// CUDA kernels of the noise ops (torch-free). Specification:
// modelsec_fast/reference.py; the noise stream is csrc/common/rng.h, the same
// code the CPU kernels run, so both devices draw the same uniforms for a seed.
#include "../common/rng.h"
#include "../common/step_math.h"
#include "cuda_common.cuh"
#include "launchers.h"

namespace msf::cuda {
namespace {

__device__ __forceinline__ void noise4(const NoiseParams& p, uint64_t block, float z[4]) {
  if (p.source == 1)
    chacha_normal4(p.key, block, p.tensor_index, z);
  else
    philox_normal4(p.seed, p.offset + block, p.tensor_index, z);
}

template <typename T, typename Acc>
__global__ void row_sum_squares_kernel(const T* x, int64_t P, Acc* out) {
  const Acc s = block_row_sum_squares<T, Acc>(x + int64_t(blockIdx.x) * P, P);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

template <typename Acc>
__global__ void clip_factors_kernel(const Acc* partials, int T, int64_t B, float max_norm,
                                    float* norms, Acc* factors) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  Acc sq = 0;
  for (int t = 0; t < T; ++t) sq += partials[int64_t(t) * B + i];  // tensors in order
  const float n = float(sqrt(sq));
  norms[i] = n;
  factors[i] = isfinite(n) ? Acc(clip_factor(n, max_norm)) : Acc(0);
}

template <typename T, typename Acc>
__global__ void weighted_sum_noise_kernel(T* out, const T* g, const Acc* f, int64_t B, int64_t P,
                                          Acc std, Acc scale, NoiseParams p) {
  const int64_t blocks = (P + 3) / 4;
  for (int64_t blk = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; blk < blocks;
       blk += int64_t(gridDim.x) * blockDim.x) {
    float z[4];
    noise4(p, uint64_t(blk), z);
    for (int q = 0; q < 4; ++q) {
      const int64_t j = blk * 4 + q;
      if (j >= P) break;
      Acc acc = 0;
      for (int64_t i = 0; i < B; ++i) acc += f[i] * Acc(g[i * P + j]);  // samples in order
      out[j] = T((acc + std * Acc(z[q])) * scale);
    }
  }
}

template <typename T, typename Acc>
__global__ void add_noise_kernel(T* x, int64_t n, Acc std, Acc scale, NoiseParams p) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t blk = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; blk < blocks;
       blk += int64_t(gridDim.x) * blockDim.x) {
    float z[4];
    noise4(p, uint64_t(blk), z);
    for (int q = 0; q < 4; ++q) {
      const int64_t j = blk * 4 + q;
      if (j < n) x[j] = T((Acc(x[j]) + std * Acc(z[q])) * scale);
    }
  }
}

__global__ void fill_normals_kernel(float* out, int64_t n, NoiseParams p) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t blk = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; blk < blocks;
       blk += int64_t(gridDim.x) * blockDim.x) {
    float z[4];
    noise4(p, uint64_t(blk), z);
    for (int q = 0; q < 4; ++q)
      if (blk * 4 + q < n) out[blk * 4 + q] = z[q];
  }
}

}  // namespace

const char* launch_row_sum_squares(DType dtype, const void* x, int64_t B, int64_t P, void* out,
                                   void* stream) {
  if (B == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, [&]<typename T, typename Acc>() {
    row_sum_squares_kernel<T, Acc><<<unsigned(B), kThreads, 0, s>>>(static_cast<const T*>(x), P,
                                                                     static_cast<Acc*>(out));
  });
}

const char* launch_clip_factors(DType dtype, const void* partials, int T, int64_t B, float max_norm,
                                float* norms, void* factors, void* stream) {
  if (B == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, [&]<typename E, typename Acc>() {
    clip_factors_kernel<Acc><<<grid_for(B), kThreads, 0, s>>>(
        static_cast<const Acc*>(partials), T, B, max_norm, norms, static_cast<Acc*>(factors));
  });
}

const char* launch_weighted_sum_noise(DType dtype, void* out, const void* g, const void* f,
                                      int64_t B, int64_t P, double std, double scale,
                                      const NoiseParams& noise, void* stream) {
  if (P == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, [&]<typename T, typename Acc>() {
    weighted_sum_noise_kernel<T, Acc><<<grid_for((P + 3) / 4), kThreads, 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(g), static_cast<const Acc*>(f), B, P,
        Acc(std), Acc(scale), noise);
  });
}

const char* launch_add_noise(DType dtype, void* x, int64_t n, double std, double scale,
                             const NoiseParams& noise, void* stream) {
  if (n == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, [&]<typename T, typename Acc>() {
    add_noise_kernel<T, Acc><<<grid_for((n + 3) / 4), kThreads, 0, s>>>(
        static_cast<T*>(x), n, Acc(std), Acc(scale), noise);
  });
}

const char* launch_fill_normals(float* out, int64_t n, const NoiseParams& noise, void* stream) {
  if (n == 0) return nullptr;
  fill_normals_kernel<<<grid_for((n + 3) / 4), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      out, n, noise);
  return launch_status();
}

}  // namespace msf::cuda
