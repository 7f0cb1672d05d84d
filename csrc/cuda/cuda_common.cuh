// Helpers shared by the .cu files: dtype dispatch, block reduction, launch sizes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/kernel_args.h"

namespace msf::cuda {

constexpr int kThreads = 256;

inline int grid_for(int64_t work, int threads = kThreads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return int(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

inline const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Calls fn.template operator()<T, Acc>() for an element type and its op-math type.
template <typename Fn>
const char* dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F64: fn.template operator()<double, double>(); break;
    case DType::BF16: fn.template operator()<__nv_bfloat16, float>(); break;
    case DType::F16: fn.template operator()<__half, float>(); break;
    case DType::F32: fn.template operator()<float, float>(); break;
  }
  return launch_status();
}

// Sum over the block in a fixed tree order (deterministic); result in thread 0.
template <typename Acc>
__device__ Acc block_sum(Acc v) {
  __shared__ Acc shared[kThreads];
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) shared[threadIdx.x] += shared[threadIdx.x + w];
    __syncthreads();
  }
  return shared[0];
}

// Sum of squares of row[0..n) in Acc, one block per row, in a fixed order
// (deterministic); read the result in thread 0, as with block_sum.
template <typename T, typename Acc>
__device__ Acc block_row_sum_squares(const T* row, int64_t n) {
  Acc s = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const Acc v = Acc(row[j]);
    s += v * v;
  }
  return block_sum(s);
}

}  // namespace msf::cuda
