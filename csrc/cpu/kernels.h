// Torch-free CPU inner loops, compiled once per instruction set
// (kernels_isa.cpp with MSF_ISA = base | avx2 | avx512) and picked at run time.
//
// Every function works on contiguous memory of one of float, double, bfloat16
// and half (the DType of common/kernel_args.h); the op-math type is double for
// double and float otherwise. Noise element
// j of a range uses the stream block (first_index + j) / 4, so `first_index`
// must be a multiple of 4 unless the range is empty.
#pragma once

#include <cstdint>

#include "../common/kernel_args.h"

namespace msf::cpu {

using NoiseStream = NoiseParams;

struct Kernels {
  const char* isa;
  // Sum of squares of x[0:n) in op-math, in a fixed order (16 lanes, then a tree).
  double (*sum_squares)(DType dt, const void* x, int64_t n);
  // acc[0:n) += c * x[0:n); acc is the op-math type.
  void (*axpy)(DType dt, const void* x, int64_t n, double c, void* acc);
  // acc0[j] += acc_k[j] for k = 1..count-1 in order, j in [0, n); op-math arrays.
  void (*sum_into_first)(DType dt, void* const* accs, int count, int64_t n);
  // out[j] = T((base[j] + std * z[first + j]) * scale), j in [0, n). base is the
  // op-math array, or nullptr to read out itself (in place).
  void (*add_noise)(DType dt, void* out, const void* base, int64_t n, int64_t first,
                    double std, double scale, const NoiseStream& stream);
  // fp32 normals z[first + j], j in [0, n), of a stream (for tests).
  void (*normals)(float* out, int64_t n, int64_t first, const NoiseStream& stream);
  // L-inf step on n contiguous elements with one alpha/eps.
  void (*sign_step)(DType dt, void* out, const void* x_adv, const void* grad,
                    const void* x_orig, int64_t n, double alpha, double eps, double lo,
                    double hi);
  // L2 step on one sample of n elements; scratch holds n op-math values.
  void (*l2_step)(DType dt, void* out, const void* x_adv, const void* grad,
                  const void* x_orig, int64_t n, double alpha, double eps, double lo,
                  double hi, void* scratch);
  // Floats of scratch one conv_weight_grad call needs.
  int64_t (*conv_grad_scratch)(const ConvGeometry& geo);
  // One sample and group of a convolution: W = G A^T in fp32, with G the output
  // gradient (c_out, oh*ow) and A the input's patches (c_in*kh*kw, oh*ow), summed
  // in a fixed order. Writes W (c_out, c_in*kh*kw), the weight's layout, to `out`
  // unless it is null; returns the sum of W's squares (per 6x16 tile in float,
  // across tiles in double).
  double (*conv_weight_grad)(const float* x, const float* g, const ConvGeometry& geo,
                             float* out, float* scratch);
};

// The per-ISA conv_weight_grad (conv_grad_isa.cpp), for the tables of kernels_isa.cpp.
#ifdef MSF_ISA
namespace MSF_ISA {
int64_t conv_grad_scratch(const ConvGeometry& geo);
double conv_weight_grad(const float* x, const float* g, const ConvGeometry& geo, float* out,
                        float* scratch);
}  // namespace MSF_ISA
#endif

// The best table this CPU supports.
const Kernels& kernels();

namespace base { extern const Kernels table; }
namespace avx2 { extern const Kernels table; }
namespace avx512 { extern const Kernels table; }

}  // namespace msf::cpu
