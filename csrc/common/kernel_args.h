// Arguments that the host code hands to both the CPU and the CUDA kernels.
// Torch-free, so the per-ISA CPU loops and the .cu files need no torch headers.
#pragma once

#include <cstdint>

namespace msf {

// Element type of an op's tensors. The op-math type (accumulation and
// arithmetic) is double for F64 and float otherwise, as ATen's opmath_type.
enum class DType : int { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };

// Noise sources of the noise ops (the schema's `int source`).
constexpr int64_t kSourcePhilox = 0;  // reproducible: Philox keyed by (seed, offset)
constexpr int64_t kSourceSecure = 1;  // ChaCha20 keyed with 256 bits from the OS

// One call's noise stream (specification: modelsec_fast/reference.py).
struct NoiseParams {
  int source;             // kSourcePhilox or kSourceSecure
  uint64_t seed;          // Philox key
  uint64_t offset;        // Philox block offset
  uint32_t key[8];        // ChaCha20 key
  uint32_t tensor_index;  // counter word of the tensor within the call
};

// One 2-D convolution, per group, for the per-sample weight-gradient kernels:
// input (c_in, h, w), output gradient (c_out, oh, ow), weight (c_out, c_in, kh, kw);
// 1-D convolutions are 2-D ones of height 1.
struct ConvGeometry {
  int64_t c_in, h, w;
  int64_t c_out, oh, ow;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

}  // namespace msf
