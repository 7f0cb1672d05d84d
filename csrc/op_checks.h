// Argument checks shared by the CPU and CUDA entry points. They mirror the
// Python checks in modelsec_fast/ops.py so a direct torch.ops call fails the
// same way (ValueError / TypeError).
#pragma once

#include <ATen/ATen.h>  // at::isfinite, Tensor::all/item for the finiteness checks
#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <vector>

namespace msf {

inline bool is_supported_float(c10::ScalarType st) {
  return st == c10::kFloat || st == c10::kDouble || st == c10::kBFloat16 || st == c10::kHalf;
}

inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name, " has dtype ",
                   t.scalar_type(), "; supported: float32, float64, bfloat16, float16");
}

inline void check_finite(const char* op, const char* name, double v) {
  TORCH_CHECK_VALUE(std::isfinite(v), op, ": ", name, " must be finite, got ", v);
}

inline void check_nonneg(const char* op, const char* name, double v) {
  check_finite(op, name, v);
  TORCH_CHECK_VALUE(v >= 0, op, ": ", name, " must be >= 0, got ", v);
}

// grads: non-empty, each (B, ...), same B, dtype and device.
inline void check_grads(const char* op, at::TensorList grads) {
  TORCH_CHECK_VALUE(!grads.empty(), op, ": grads is empty");
  const auto& first = grads[0];
  for (size_t t = 0; t < grads.size(); ++t) {
    const auto& g = grads[t];
    const std::string name = "grads[" + std::to_string(t) + "]";
    check_float_tensor(op, name.c_str(), g);
    TORCH_CHECK_VALUE(g.dim() >= 1, op, ": ", name, " must be shaped (B, *param_shape)");
    TORCH_CHECK_VALUE(g.size(0) == first.size(0), op, ": mismatched batch size: grads[0] has B=",
                      first.size(0), ", ", name, " has B=", g.size(0));
    TORCH_CHECK_VALUE(g.device() == first.device(), op, ": mixed devices: grads[0] on ",
                      first.device(), ", ", name, " on ", g.device());
    TORCH_CHECK_TYPE(g.scalar_type() == first.scalar_type(), op, ": mixed dtypes: grads[0] is ",
                     first.scalar_type(), ", ", name, " is ", g.scalar_type());
  }
}

inline void check_noise_args(const char* op, double noise_std, double scale, int64_t source) {
  check_nonneg(op, "noise_std", noise_std);
  check_finite(op, "scale", scale);
  TORCH_CHECK_VALUE(source == 0 || source == 1, op, ": source must be 0 (philox) or 1 (secure), got ",
                    source);
}

// clip_and_noise's arguments: grads as check_grads, max_norm > 0, noise as check_noise_args.
inline void check_clip_and_noise_args(const char* op, at::TensorList grads, double max_norm,
                                      double noise_std, double scale, int64_t source) {
  check_grads(op, grads);
  check_finite(op, "max_norm", max_norm);
  TORCH_CHECK_VALUE(max_norm > 0, op, ": max_norm must be > 0, got ", max_norm);
  check_noise_args(op, noise_std, scale, source);
}

// accumulate_and_noise's arguments: grads as check_grads, factors (B,) on grads' device.
inline void check_accumulate_args(const char* op, at::TensorList grads, const at::Tensor& factors,
                                  double noise_std, double scale, int64_t source) {
  check_grads(op, grads);
  check_float_tensor(op, "factors", factors);
  const int64_t B = grads[0].size(0);
  TORCH_CHECK_VALUE(factors.dim() == 1 && factors.size(0) == B, op, ": factors must have shape (",
                    B, ",), got ", factors.sizes());
  TORCH_CHECK_VALUE(factors.device() == grads[0].device(), op, ": factors on ", factors.device(),
                    ", grads on ", grads[0].device());
  check_noise_args(op, noise_std, scale, source);
}

// A NaN/Inf per-sample gradient must raise, never yield a sum that looks valid.
inline void check_norms_finite(const char* op, bool all_finite, int64_t first_bad_sample) {
  TORCH_CHECK_VALUE(all_finite, op, ": the per-sample gradient of sample ", first_bad_sample,
                    " has a non-finite norm (NaN/Inf in the gradient, or its squared norm ",
                    "overflows float32); refusing to return a noised sum");
}

inline void check_weighted_sum_finite(const char* op, const at::Tensor& sum, size_t tensor_index) {
  TORCH_CHECK_VALUE(at::isfinite(sum).all().item<bool>(), op, ": the weighted sum of tensor ",
                    tensor_index, " is not finite (NaN/Inf in the per-sample gradients or factors)");
}

// _fill_normals_ (the test hook that exposes the raw normal stream).
inline void check_fill_normals_args(const at::Tensor& out, int64_t source, c10::IntArrayRef key) {
  TORCH_CHECK_TYPE(out.scalar_type() == c10::kFloat && out.dim() == 1 && out.is_contiguous(),
                   "_fill_normals_: out must be a contiguous 1-D float32 tensor");
  TORCH_CHECK_VALUE(source == 0 || (source == 1 && key.size() == 8),
                    "_fill_normals_: source 0, or source 1 with an 8-word key");
}

// x_adv, grad, x_orig alike; per-sample alpha/eps shaped (B,); scalars valid.
inline void check_step_args(const char* op, const at::Tensor& x, const at::Tensor& g,
                            const at::Tensor& xo, double alpha, double eps, double lo, double hi,
                            const c10::optional<at::Tensor>& alpha_t,
                            const c10::optional<at::Tensor>& eps_t) {
  check_float_tensor(op, "x_adv", x);
  for (const auto* p : {&g, &xo}) {
    const char* name = p == &g ? "grad" : "x_orig";
    TORCH_CHECK_VALUE(p->sizes() == x.sizes(), op, ": ", name, " has shape ", p->sizes(),
                      ", x_adv has ", x.sizes());
    TORCH_CHECK_VALUE(p->device() == x.device(), op, ": mixed devices: ", name, " on ",
                      p->device(), ", x_adv on ", x.device());
    TORCH_CHECK_TYPE(p->scalar_type() == x.scalar_type(), op, ": mixed dtypes: ", name, " is ",
                     p->scalar_type(), ", x_adv is ", x.scalar_type());
  }
  check_finite(op, "lo", lo);
  check_finite(op, "hi", hi);
  TORCH_CHECK_VALUE(lo <= hi, op, ": lo (", lo, ") > hi (", hi, ")");
  check_nonneg(op, "alpha", alpha);
  check_nonneg(op, "eps", eps);
  for (const auto* p : {&alpha_t, &eps_t}) {
    if (!p->has_value()) continue;
    const char* name = p == &alpha_t ? "alpha" : "eps";
    const auto& v = p->value();
    check_float_tensor(op, name, v);
    TORCH_CHECK_VALUE(x.dim() >= 1 && v.dim() == 1 && v.size(0) == x.size(0), op, ": per-sample ",
                      name, " must have shape (B,), got ", v.sizes());
    TORCH_CHECK_VALUE(v.device() == x.device(), op, ": ", name, " on ", v.device(), ", x_adv on ",
                      x.device());
  }
}

}  // namespace msf
