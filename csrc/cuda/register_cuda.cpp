// CUDA implementations of the modelsec_fast ops: validation, layout and the
// current stream, then the torch-free launchers of csrc/cuda/*.cu.
//
// Written with device-generic c10 APIs only (c10::DeviceGuard and the CUDA
// DeviceGuardImplInterface's getStream), so it compiles against a CPU-only
// torch's headers too: CI compile-checks it there (tests/ops/test_nvcc_compile.py)
// and links it only with a CUDA torch.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <vector>

#include "../op_checks.h"
#include "../os_entropy.h"
#include "launchers.h"

namespace msf::cuda {
namespace {

using at::Tensor;

int dtype_code(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return 1;
    case at::kBFloat16: return 2;
    case at::kHalf: return 3;
    default: return 0;
  }
}

at::ScalarType opmath_of(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The current CUDA stream of t's device, as the launchers take it.
void* current_stream(const Tensor& t) {
  const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  return impl->getStream(t.device()).native_handle();
}

void check(const char* op, const char* err) {
  TORCH_CHECK(err == nullptr, op, ": CUDA launch failed: ", err);
}

NoiseParams make_noise(int64_t seed, int64_t offset, int64_t source) {
  NoiseParams p{};
  p.source = int(source);
  p.seed = uint64_t(seed);
  p.offset = uint64_t(offset);
  if (source == 1) os_random_key(p.key);
  return p;
}

Tensor rows(const Tensor& g) {
  return g.contiguous().reshape({g.size(0), c10::multiply_integers(g.sizes().slice(1))});
}

std::tuple<std::vector<Tensor>, Tensor> clip_and_noise_cuda(at::TensorList grads, double max_norm,
                                                            double noise_std, double scale,
                                                            int64_t seed, int64_t offset,
                                                            int64_t source) {
  const char* op = "clip_and_noise";
  check_clip_and_noise_args(op, grads, max_norm, noise_std, scale, source);
  c10::DeviceGuard guard(grads[0].device());
  void* stream = current_stream(grads[0]);
  const int dt = dtype_code(grads[0]);
  const int64_t B = grads[0].size(0);
  const int T = int(grads.size());
  std::vector<Tensor> flat(T);
  auto acc_opts = grads[0].options().dtype(opmath_of(grads[0]));
  Tensor partials = at::empty({T, B}, acc_opts);
  for (int t = 0; t < T; ++t) {
    flat[t] = rows(grads[t]);
    check(op, launch_row_sum_squares(dt, flat[t].data_ptr(), B, flat[t].size(1),
                                     static_cast<char*>(partials.data_ptr()) + t * B * partials.element_size(),
                                     stream));
  }
  Tensor norms = at::empty({B}, grads[0].options().dtype(at::kFloat));
  Tensor factors = at::empty({B}, acc_opts);
  check(op, launch_clip_factors(dt, partials.data_ptr(), T, B, float(max_norm),
                                norms.data_ptr<float>(), factors.data_ptr(), stream));
  // One device sync: a NaN/Inf gradient must raise, never yield a noised sum.
  if (B > 0) {
    const Tensor bad = at::isfinite(norms).logical_not().nonzero();
    check_norms_finite(op, bad.numel() == 0, bad.numel() ? bad[0][0].item<int64_t>() : -1);
  }
  NoiseParams noise = make_noise(seed, offset, source);
  std::vector<Tensor> out;
  for (int t = 0; t < T; ++t) {
    Tensor o = at::empty(grads[t].sizes().slice(1), grads[t].options());
    noise.tensor_index = uint32_t(t);
    check(op, launch_weighted_sum_noise(dt, o.data_ptr(), flat[t].data_ptr(), factors.data_ptr(), B,
                                        flat[t].size(1), noise_std, scale, noise, stream));
    out.push_back(o);
  }
  return {out, norms};
}

std::vector<Tensor> accumulate_and_noise_cuda(at::TensorList grads, const Tensor& factors,
                                              double noise_std, double scale, int64_t seed,
                                              int64_t offset, int64_t source) {
  const char* op = "accumulate_and_noise";
  check_accumulate_args(op, grads, factors, noise_std, scale, source);
  const int64_t B = grads[0].size(0);
  c10::DeviceGuard guard(grads[0].device());
  void* stream = current_stream(grads[0]);
  const int dt = dtype_code(grads[0]);
  const Tensor f = factors.to(opmath_of(grads[0])).contiguous();
  NoiseParams noise = make_noise(seed, offset, source);
  std::vector<Tensor> out;
  for (size_t t = 0; t < grads.size(); ++t) {
    const Tensor g = rows(grads[t]);
    Tensor o = at::empty(grads[t].sizes().slice(1), grads[t].options());
    noise.tensor_index = uint32_t(t);
    check(op, launch_weighted_sum_noise(dt, o.data_ptr(), g.data_ptr(), f.data_ptr(), B, g.size(1),
                                        noise_std, scale, noise, stream));
    check_weighted_sum_finite(op, o, t);
    out.push_back(o);
  }
  return out;
}

void add_noise_cuda(at::TensorList tensors, double noise_std, double scale, int64_t seed,
                    int64_t offset, int64_t source) {
  const char* op = "add_noise_";
  check_noise_args(op, noise_std, scale, source);
  if (tensors.empty()) return;
  c10::DeviceGuard guard(tensors[0].device());
  void* stream = current_stream(tensors[0]);
  NoiseParams noise = make_noise(seed, offset, source);
  for (size_t t = 0; t < tensors.size(); ++t) {
    check_float_tensor(op, "tensors[i]", tensors[t]);
    TORCH_CHECK_VALUE(tensors[t].device() == tensors[0].device(), op, ": mixed devices");
    Tensor work = tensors[t].contiguous();
    noise.tensor_index = uint32_t(t);
    check(op, launch_add_noise(dtype_code(work), work.data_ptr(), work.numel(), noise_std, scale,
                               noise, stream));
    if (!work.is_same(tensors[t])) tensors[t].copy_(work);
  }
}

c10::optional<Tensor> per_sample(const c10::optional<Tensor>& v, const Tensor& x) {
  if (!v.has_value()) return c10::nullopt;
  return v->to(opmath_of(x)).contiguous();
}

// Per-sample alpha and eps (already in op-math) must be finite and >= 0.
void check_per_sample_values(const char* op, const c10::optional<Tensor>& alpha,
                             const c10::optional<Tensor>& eps) {
  for (const auto* p : {&alpha, &eps})
    if (p->has_value())
      TORCH_CHECK_VALUE(((**p) >= 0).logical_and(at::isfinite(**p)).all().item<bool>(), op,
                        ": per-sample alpha/eps must be finite and >= 0");
}

Tensor sign_step_into(const char* op, Tensor out, const Tensor& x_adv, const Tensor& grad,
                      const Tensor& x_orig, double alpha, double eps, double lo, double hi,
                      const c10::optional<Tensor>& alpha_t, const c10::optional<Tensor>& eps_t) {
  check_step_args(op, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  c10::DeviceGuard guard(x_adv.device());
  const Tensor x = x_adv.contiguous(), g = grad.contiguous(), xo = x_orig.contiguous();
  const auto a = per_sample(alpha_t, x), e = per_sample(eps_t, x);
  check_per_sample_values(op, a, e);
  const int64_t B = x.dim() ? x.size(0) : 1;
  const int64_t per = B ? x.numel() / B : 0;
  check(op, launch_sign_step(dtype_code(x), out.data_ptr(), x.data_ptr(), g.data_ptr(), xo.data_ptr(),
                             x.numel(), per, alpha, eps, a ? a->data_ptr() : nullptr,
                             e ? e->data_ptr() : nullptr, lo, hi, current_stream(x)));
  return out;
}

Tensor sign_step_cuda(const Tensor& x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
                      double eps, double lo, double hi, const c10::optional<Tensor>& alpha_t,
                      const c10::optional<Tensor>& eps_t) {
  return sign_step_into("sign_step", at::empty(x_adv.sizes(), x_adv.options()), x_adv, grad, x_orig,
                        alpha, eps, lo, hi, alpha_t, eps_t);
}

void sign_step_inplace_cuda(Tensor& x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
                            double eps, double lo, double hi, const c10::optional<Tensor>& alpha_t,
                            const c10::optional<Tensor>& eps_t) {
  if (x_adv.is_contiguous()) {
    sign_step_into("sign_step_", x_adv, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
    return;
  }
  x_adv.copy_(sign_step_into("sign_step_", at::empty(x_adv.sizes(), x_adv.options()), x_adv, grad,
                             x_orig, alpha, eps, lo, hi, alpha_t, eps_t));
}

Tensor l2_step_cuda(const Tensor& x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
                    double eps, double lo, double hi, const c10::optional<Tensor>& alpha_t,
                    const c10::optional<Tensor>& eps_t) {
  const char* op = "l2_step";
  check_step_args(op, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  TORCH_CHECK_VALUE(x_adv.dim() >= 1, op, ": x_adv must be shaped (B, ...)");
  c10::DeviceGuard guard(x_adv.device());
  const Tensor x = x_adv.contiguous(), g = grad.contiguous(), xo = x_orig.contiguous();
  const auto a = per_sample(alpha_t, x), e = per_sample(eps_t, x);
  check_per_sample_values(op, a, e);
  const int64_t B = x.size(0);
  Tensor out = at::empty(x.sizes(), x.options());
  Tensor scratch = at::empty({2 * std::max<int64_t>(B, 1)}, x.options().dtype(opmath_of(x)));
  check(op, launch_l2_step(dtype_code(x), out.data_ptr(), x.data_ptr(), g.data_ptr(), xo.data_ptr(), B,
                           B ? x.numel() / B : 0, alpha, eps, a ? a->data_ptr() : nullptr,
                           e ? e->data_ptr() : nullptr, lo, hi, scratch.data_ptr(),
                           current_stream(x)));
  return out;
}

void fill_normals_cuda(Tensor& out, int64_t seed, int64_t offset, int64_t tensor_index,
                       int64_t source, c10::IntArrayRef key) {
  check_fill_normals_args(out, source, key);
  c10::DeviceGuard guard(out.device());
  NoiseParams p{};
  p.source = int(source);
  p.seed = uint64_t(seed);
  p.offset = uint64_t(offset);
  p.tensor_index = uint32_t(tensor_index);
  for (size_t w = 0; w < key.size() && w < 8; ++w) p.key[w] = uint32_t(key[w]);
  check("_fill_normals_", launch_fill_normals(out.data_ptr<float>(), out.numel(), p, current_stream(out)));
}

}  // namespace

TORCH_LIBRARY_IMPL(modelsec_fast, CUDA, m) {
  m.impl("clip_and_noise", &clip_and_noise_cuda);
  m.impl("accumulate_and_noise", &accumulate_and_noise_cuda);
  m.impl("add_noise_", &add_noise_cuda);
  m.impl("sign_step", &sign_step_cuda);
  m.impl("sign_step_", &sign_step_inplace_cuda);
  m.impl("l2_step", &l2_step_cuda);
  m.impl("_fill_normals_", &fill_normals_cuda);
}

}  // namespace msf::cuda
