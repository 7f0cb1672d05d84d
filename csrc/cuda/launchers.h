// C launchers of the CUDA kernels: raw pointers, sizes, scalars and a stream
// passed as void*, so the host registration (register_cuda.cpp) needs no CUDA
// headers and the kernels need no torch headers. Each returns nullptr on
// success or the CUDA error string of the launch.
//
// dtype: the element type (common/kernel_args.h). "acc" arrays use the op-math
// type: double for float64, float otherwise.
#pragma once

#include <cstdint>

#include "../common/kernel_args.h"

namespace msf::cuda {

// out_acc[i] = sum_j x[i, j]^2 for x (B, P) contiguous; one block per row, fixed order.
const char* launch_row_sum_squares(DType dtype, const void* x, int64_t B, int64_t P, void* out_acc,
                                   void* stream);

// partials_acc (T, B) -> norms[i] = sqrt(sum_t partials[t, i]) (float32) and
// factors_acc[i] = min(1, max_norm / (norms[i] + CLIP_EPS)) (0 when not finite).
const char* launch_clip_factors(DType dtype, const void* partials_acc, int T, int64_t B,
                                float max_norm, float* norms, void* factors_acc, void* stream);

// out[j] = T((sum_i factors_acc[i] * g[i, j] + std * z_j) * scale), g (B, P) contiguous.
const char* launch_weighted_sum_noise(DType dtype, void* out, const void* g, const void* factors_acc,
                                      int64_t B, int64_t P, double std, double scale,
                                      const NoiseParams& noise, void* stream);

// x[j] = T((x[j] + std * z_j) * scale), x contiguous with n elements.
const char* launch_add_noise(DType dtype, void* x, int64_t n, double std, double scale,
                             const NoiseParams& noise, void* stream);

// out[j] = z_j (float32), the raw stream, for tests.
const char* launch_fill_normals(float* out, int64_t n, const NoiseParams& noise, void* stream);

// L-inf step on n contiguous elements; per_sample elements per sample. alpha_ps
// and eps_ps (nullable) hold per-sample values in the op-math type.
const char* launch_sign_step(DType dtype, void* out, const void* x, const void* g, const void* xo,
                             int64_t n, int64_t per_sample, double alpha, double eps,
                             const void* alpha_ps, const void* eps_ps, double lo, double hi,
                             void* stream);

// L2 step on (B, per_sample) contiguous tensors; scratch_acc holds 2*B op-math values.
const char* launch_l2_step(DType dtype, void* out, const void* x, const void* g, const void* xo,
                           int64_t B, int64_t per_sample, double alpha, double eps,
                           const void* alpha_ps, const void* eps_ps, double lo, double hi,
                           void* scratch_acc, void* stream);

// Floats of the partial sums launch_conv_weight_grad needs per sample and group.
int64_t conv_grad_partials(const ConvGeometry& geo);

// Per-sample weight gradients of a 2-D convolution (x (B, groups * c_in, h, w), g
// (B, groups * c_out, oh, ow), float32, contiguous): sq[i] = sum of the squares of
// sample i's gradient; out (B, groups * c_out, c_in * kh * kw) unless null; partial
// holds B * groups * conv_grad_partials(geo) floats of scratch.
const char* launch_conv_weight_grad(const float* x, const float* g, const ConvGeometry& geo,
                                    int64_t B, int64_t groups, float* out, float* partial,
                                    float* sq, void* stream);

}  // namespace msf::cuda
