// CUDA implementations of the modelsec_fast ops (LibTorch stable ABI): checks,
// layout and torch's current stream, then the torch-free launchers of
// csrc/cuda/*.cu. The host code shared with the CPU kernels is ../op_common.h.
//
// It needs no CUDA headers, so it compiles against a CPU-only torch's headers
// too: CI compile-checks it there (tests/ops/test_nvcc_compile.py) and links it
// only with a CUDA torch.
#ifndef USE_CUDA
#define USE_CUDA  // declares the CUDA entry points of the AOTI C shim (current stream)
#endif
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../op_common.h"
#include "launchers.h"

namespace msf::cuda {
namespace {

using torch::stable::accelerator::DeviceGuard;

// torch's current CUDA stream on t's device, as the launchers take it.
void* current_stream(const Tensor& t) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return stream;
}

void check_launch(const char* op, const char* err) {
  STD_TORCH_CHECK(err == nullptr, op, ": CUDA launch failed: ", err);
}

// g as a contiguous (B, per_sample_numel) matrix.
Tensor rows(const Tensor& g) {
  return torch::stable::reshape(torch::stable::contiguous(g), {g.size(0), per_sample_numel(g)});
}

char* bytes(const Tensor& t) { return static_cast<char*>(t.data_ptr()); }

std::tuple<std::vector<Tensor>, Tensor> clip_and_noise_cuda(std::vector<Tensor> grads,
                                                            double max_norm, double noise_std,
                                                            double scale, int64_t seed,
                                                            int64_t offset, int64_t source) {
  const char* op = "clip_and_noise";
  check_clip_and_noise_args(grads, max_norm, noise_std, scale, source);
  DeviceGuard guard(grads[0].get_device_index());
  void* stream = current_stream(grads[0]);
  const DType dt = dtype_of(grads[0]);
  const int64_t B = grads[0].size(0);
  const int T = int(grads.size());
  const ScalarType acc = opmath_of(grads[0]);
  std::vector<Tensor> flat(T);
  Tensor partials = torch::stable::new_empty(grads[0], {T, B}, acc);
  for (int t = 0; t < T; ++t) {
    flat[t] = rows(grads[t]);
    check_launch(op, launch_row_sum_squares(dt, flat[t].data_ptr(), B, flat[t].size(1),
                                            bytes(partials) + t * B * partials.element_size(),
                                            stream));
  }
  Tensor norms = torch::stable::new_empty(grads[0], {B}, ScalarType::Float);
  Tensor factors = torch::stable::new_empty(grads[0], {B}, acc);
  check_launch(op, launch_clip_factors(dt, partials.data_ptr(), T, B, float(max_norm),
                                       static_cast<float*>(norms.data_ptr()), factors.data_ptr(),
                                       stream));
  // One device sync: a NaN/Inf gradient must raise, never yield a noised sum.
  if (B > 0 && !all_finite(norms)) {
    const Tensor host = torch::stable::to(norms, torch::stable::Device(torch::headeronly::DeviceType::CPU));
    const float* n = static_cast<const float*>(host.data_ptr());
    int64_t bad = 0;
    while (bad < B && std::isfinite(n[bad])) ++bad;
    check_norms_finite(op, bad);
  }
  NoiseParams noise = make_noise_params(seed, offset, source);
  std::vector<Tensor> out = empty_sample_shaped(grads);
  for (int t = 0; t < T; ++t) {
    noise.tensor_index = uint32_t(t);
    check_launch(op, launch_weighted_sum_noise(dt, out[t].data_ptr(), flat[t].data_ptr(),
                                               factors.data_ptr(), B, flat[t].size(1), noise_std,
                                               scale, noise, stream));
  }
  return {out, norms};
}

std::vector<Tensor> accumulate_and_noise_cuda(std::vector<Tensor> grads, const Tensor& factors,
                                              double noise_std, double scale, int64_t seed,
                                              int64_t offset, int64_t source) {
  const char* op = "accumulate_and_noise";
  check_accumulate_args(grads, factors, noise_std, scale, source);
  const int64_t B = grads[0].size(0);
  DeviceGuard guard(grads[0].get_device_index());
  void* stream = current_stream(grads[0]);
  const DType dt = dtype_of(grads[0]);
  const Tensor f = torch::stable::contiguous(torch::stable::to(factors, opmath_of(grads[0])));
  NoiseParams noise = make_noise_params(seed, offset, source);
  std::vector<Tensor> out = empty_sample_shaped(grads);
  for (size_t t = 0; t < grads.size(); ++t) {
    const Tensor g = rows(grads[t]);
    noise.tensor_index = uint32_t(t);
    check_launch(op, launch_weighted_sum_noise(dt, out[t].data_ptr(), g.data_ptr(), f.data_ptr(),
                                               B, g.size(1), noise_std, scale, noise, stream));
    check_weighted_sum_finite(op, out[t], t);
  }
  return out;
}

void add_noise_cuda(std::vector<Tensor> tensors, double noise_std, double scale, int64_t seed,
                    int64_t offset, int64_t source) {
  const char* op = "add_noise_";
  check_add_noise_args(tensors, noise_std, scale, source);
  if (tensors.empty()) return;
  DeviceGuard guard(tensors[0].get_device_index());
  void* stream = current_stream(tensors[0]);
  NoiseParams noise = make_noise_params(seed, offset, source);
  for (size_t t = 0; t < tensors.size(); ++t) {
    // contiguous() returns the tensor itself when it already is; otherwise write back.
    Tensor work = torch::stable::contiguous(tensors[t]);
    noise.tensor_index = uint32_t(t);
    check_launch(op, launch_add_noise(dtype_of(work), work.data_ptr(), work.numel(), noise_std,
                                      scale, noise, stream));
    if (!tensors[t].is_contiguous()) torch::stable::copy_(tensors[t], work);
  }
}

const void* device_ptr(const PerSampleValue& v) {
  return v.device.has_value() ? v.device->data_ptr() : nullptr;
}

// Runs the sign step into `out` (contiguous, same shape as x_adv).
void sign_step_into(const char* op, const Tensor& out, const Tensor& x_adv, const Tensor& grad,
                    const Tensor& x_orig, double alpha, double eps, double lo, double hi,
                    const std::optional<Tensor>& alpha_t, const std::optional<Tensor>& eps_t) {
  DeviceGuard guard(x_adv.get_device_index());
  const Tensor x = torch::stable::contiguous(x_adv), g = torch::stable::contiguous(grad),
               xo = torch::stable::contiguous(x_orig);
  const PerSampleValue a = per_sample_value(op, "alpha", alpha, alpha_t, x);
  const PerSampleValue e = per_sample_value(op, "eps", eps, eps_t, x);
  const int64_t B = x.dim() ? x.size(0) : 1;
  const int64_t per = B ? x.numel() / B : 0;
  check_launch(op, launch_sign_step(dtype_of(x), out.data_ptr(), x.data_ptr(), g.data_ptr(),
                                    xo.data_ptr(), x.numel(), per, alpha, eps, device_ptr(a),
                                    device_ptr(e), lo, hi, current_stream(x)));
}

Tensor sign_step_cuda(const Tensor& x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
                      double eps, double lo, double hi, std::optional<Tensor> alpha_t,
                      std::optional<Tensor> eps_t) {
  check_step_args("sign_step", x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  Tensor out = torch::stable::new_empty(x_adv, x_adv.sizes());
  sign_step_into("sign_step", out, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  return out;
}

void sign_step_inplace_cuda(Tensor x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
                            double eps, double lo, double hi, std::optional<Tensor> alpha_t,
                            std::optional<Tensor> eps_t) {
  check_step_args("sign_step_", x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  if (x_adv.is_contiguous()) {
    // Elementwise: reading and writing the same index is safe.
    sign_step_into("sign_step_", x_adv, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
    return;
  }
  Tensor out = torch::stable::new_empty(x_adv, x_adv.sizes());
  sign_step_into("sign_step_", out, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  torch::stable::copy_(x_adv, out);
}

Tensor l2_step_cuda(const Tensor& x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
                    double eps, double lo, double hi, std::optional<Tensor> alpha_t,
                    std::optional<Tensor> eps_t) {
  const char* op = "l2_step";
  check_step_args(op, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  STD_TORCH_CHECK(x_adv.dim() >= 1, op, ": x_adv must be shaped (B, ...), got a 0-d tensor");
  DeviceGuard guard(x_adv.get_device_index());
  const Tensor x = torch::stable::contiguous(x_adv), g = torch::stable::contiguous(grad),
               xo = torch::stable::contiguous(x_orig);
  const PerSampleValue a = per_sample_value(op, "alpha", alpha, alpha_t, x);
  const PerSampleValue e = per_sample_value(op, "eps", eps, eps_t, x);
  const int64_t B = x.size(0);
  Tensor out = torch::stable::new_empty(x, x.sizes());
  Tensor scratch = torch::stable::new_empty(x, {2 * std::max<int64_t>(B, 1)}, opmath_of(x));
  check_launch(op, launch_l2_step(dtype_of(x), out.data_ptr(), x.data_ptr(), g.data_ptr(),
                                  xo.data_ptr(), B, B ? x.numel() / B : 0, alpha, eps,
                                  device_ptr(a), device_ptr(e), lo, hi, scratch.data_ptr(),
                                  current_stream(x)));
  return out;
}

void fill_normals_cuda(Tensor out, int64_t seed, int64_t offset, int64_t tensor_index,
                       int64_t source, std::vector<int64_t> key) {
  check_fill_normals_args(out, source, key);
  DeviceGuard guard(out.get_device_index());
  NoiseParams p = make_noise_params(seed, offset, kSourcePhilox);
  p.source = int(source);
  p.tensor_index = uint32_t(tensor_index);
  for (size_t w = 0; w < key.size() && w < 8; ++w) p.key[w] = uint32_t(key[w]);
  check_launch("_fill_normals_", launch_fill_normals(static_cast<float*>(out.data_ptr()),
                                                     out.numel(), p, current_stream(out)));
}

}  // namespace

std::tuple<Tensor, Tensor> conv_weight_grad_norms_cuda(const Tensor& x, const Tensor& grad_out,
                                                       std::vector<int64_t> kernel,
                                                       std::vector<int64_t> stride,
                                                       std::vector<int64_t> padding,
                                                       std::vector<int64_t> dilation,
                                                       int64_t groups, bool keep) {
  const char* op = "_conv_weight_grad_norms";
  const ConvGeometry geo =
      check_conv_grad_args(op, x, grad_out, kernel, stride, padding, dilation, groups);
  DeviceGuard guard(x.get_device_index());
  const Tensor xc = torch::stable::contiguous(x), gc = torch::stable::contiguous(grad_out);
  const int64_t B = x.size(0);
  Tensor grads = new_conv_weight_grads(x, geo, groups, keep);
  Tensor partial = torch::stable::new_empty(x, {B * groups * conv_grad_partials(geo)});
  Tensor sq = torch::stable::new_empty(x, {B});
  check_launch(op, launch_conv_weight_grad(
                       static_cast<const float*>(xc.data_ptr()),
                       static_cast<const float*>(gc.data_ptr()), geo, B, groups,
                       keep ? static_cast<float*>(grads.data_ptr()) : nullptr,
                       static_cast<float*>(partial.data_ptr()), static_cast<float*>(sq.data_ptr()),
                       current_stream(x)));
  return {sq, grads};
}

STABLE_TORCH_LIBRARY_IMPL(modelsec_fast, CUDA, m) {
  m.impl("clip_and_noise", TORCH_BOX(&clip_and_noise_cuda));
  m.impl("accumulate_and_noise", TORCH_BOX(&accumulate_and_noise_cuda));
  m.impl("add_noise_", TORCH_BOX(&add_noise_cuda));
  m.impl("sign_step", TORCH_BOX(&sign_step_cuda));
  m.impl("sign_step_", TORCH_BOX(&sign_step_inplace_cuda));
  m.impl("l2_step", TORCH_BOX(&l2_step_cuda));
  m.impl("_fill_normals_", TORCH_BOX(&fill_normals_cuda));
  m.impl("_conv_weight_grad_norms", TORCH_BOX(&conv_weight_grad_norms_cuda));
}

}  // namespace msf::cuda
