// Host code shared by the CPU and CUDA entry points (csrc/cpu/ops_cpu.cpp,
// csrc/cuda/register_cuda.cpp): argument checks, dtype and device handling,
// noise-stream parameters. Written against the LibTorch stable ABI only.
//
// The checks are the second line of defence: the Python wrappers in
// modelsec_fast/ops.py validate first and raise ValueError/TypeError; a direct
// torch.ops.modelsec_fast call gets the same message here, as a RuntimeError
// (the stable ABI's STD_TORCH_CHECK throws std::runtime_error).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/kernel_args.h"

namespace msf {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// ------------------------------------------------------------------ dtypes

// The kernels' element type of a tensor already checked by check_float_tensor.
DType dtype_of(const Tensor& t);
// Double for float64 tensors, Float otherwise (ATen's opmath_type).
ScalarType opmath_of(const Tensor& t);

// "cpu", "cuda:0", "meta", ...: for error messages.
std::string device_name(const Tensor& t);
// "(4, 3)": for error messages.
std::string shape_name(const Tensor& t);

// ------------------------------------------------------------------ shapes

// Elements per sample of a (B, ...) tensor (the product of its trailing sizes).
int64_t per_sample_numel(const Tensor& g);
// One uninitialised tensor per gradient, shaped like a sample (sizes[1:]), same dtype and device.
std::vector<Tensor> empty_sample_shaped(const std::vector<Tensor>& grads);
// True when every element of t is finite (any device; one host sync on CUDA).
bool all_finite(const Tensor& t);

// ------------------------------------------------------------------ noise

// The stream of one call; source kSourceSecure draws a fresh 256-bit OS key.
NoiseParams make_noise_params(int64_t seed, int64_t offset, int64_t source);

// ------------------------------------------------------------------ checks

void check_float_tensor(const char* op, const std::string& name, const Tensor& t);
void check_finite(const char* op, const char* name, double v);
void check_non_negative(const char* op, const char* name, double v);
// grads: non-empty, each a float (B, ...) tensor, one B, dtype and device.
void check_grads(const char* op, const std::vector<Tensor>& grads);
// noise_std >= 0 and finite, scale finite, source a known code.
void check_noise_args(const char* op, double noise_std, double scale, int64_t source);
void check_clip_and_noise_args(const std::vector<Tensor>& grads, double max_norm,
                               double noise_std, double scale, int64_t source);
// factors: float (B,) on the grads' device.
void check_accumulate_args(const std::vector<Tensor>& grads, const Tensor& factors,
                           double noise_std, double scale, int64_t source);
// tensors: float, one device (dtypes may differ).
void check_add_noise_args(const std::vector<Tensor>& tensors, double noise_std, double scale,
                          int64_t source);
// A NaN/Inf per-sample gradient must raise, never yield a sum that looks valid.
void check_norms_finite(const char* op, int64_t first_bad_sample);
void check_weighted_sum_finite(const char* op, const Tensor& sum, size_t tensor_index);
// x_adv, grad, x_orig alike; lo <= hi finite; alpha, eps >= 0; per-sample alpha/eps (B,).
void check_step_args(const char* op, const Tensor& x, const Tensor& g, const Tensor& xo,
                     double alpha, double eps, double lo, double hi,
                     const std::optional<Tensor>& alpha_t, const std::optional<Tensor>& eps_t);
// x (B, C_in, H, W) and grad_out (B, C_out, OH, OW), float32 on one device;
// kernel, stride, padding, dilation of length 2 (>= 1, >= 1, >= 0, >= 1); groups
// dividing both channel counts; OH, OW those of the convolution. The per-group geometry.
ConvGeometry check_conv_grad_args(const char* op, const Tensor& x, const Tensor& grad_out,
                                  const std::vector<int64_t>& kernel,
                                  const std::vector<int64_t>& stride,
                                  const std::vector<int64_t>& padding,
                                  const std::vector<int64_t>& dilation, int64_t groups);
// The per-sample gradients _conv_weight_grad_norms returns: uninitialised
// (B, groups * c_out, c_in, kh, kw) like x when keep, else an empty (0,) tensor.
Tensor new_conv_weight_grads(const Tensor& x, const ConvGeometry& geo, int64_t groups, bool keep);
// x of _row_sq_norms: a float tensor of at least 1 dimension (B, ...).
void check_row_sq_norms_args(const Tensor& x);
// _fill_normals_ (the test hook that exposes the raw normal stream).
void check_fill_normals_args(const Tensor& out, int64_t source, const std::vector<int64_t>& key);

// ------------------------------------------------------------------ per-sample values

// A step's alpha or eps: one value, or one per sample rounded to the op-math
// type (as the reference holds them), checked finite and >= 0.
struct PerSampleValue {
  std::vector<double> host;       // B values (or 1 for a scalar)
  std::optional<Tensor> device;   // the per-sample values in op-math on the images' device
  double at(int64_t i) const { return host.size() == 1 ? host[0] : host[size_t(i)]; }
};
PerSampleValue per_sample_value(const char* op, const char* name, double scalar,
                                const std::optional<Tensor>& values, const Tensor& images);

}  // namespace msf
