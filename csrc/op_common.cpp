// Host code shared by the CPU and CUDA entry points; see op_common.h.
#include "op_common.h"

#include <torch/csrc/stable/library.h>  // torch_call_dispatcher, StableIValue

#include <array>
#include <cmath>
#include <sstream>
#include <tuple>
#include <utility>

#include "os_entropy.h"

namespace msf {
namespace {

using torch::headeronly::DeviceType;

// Calls a one-argument ATen op through the stable dispatcher shim.
Tensor call_unary(const char* name, const Tensor& t) {
  std::array<StableIValue, 1> stack{torch::stable::detail::from(t)};
  STABLE_TORCH_ERROR_CODE_CHECK(
      torch_call_dispatcher(name, "", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

const char* dtype_name(const Tensor& t) { return torch::headeronly::toString(t.scalar_type()); }

}  // namespace

DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case ScalarType::Double: return DType::F64;
    case ScalarType::BFloat16: return DType::BF16;
    case ScalarType::Half: return DType::F16;
    default: return DType::F32;
  }
}

ScalarType opmath_of(const Tensor& t) {
  return t.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

std::string device_name(const Tensor& t) {
  const auto d = t.device();
  switch (d.type()) {
    case DeviceType::CPU: return "cpu";
    case DeviceType::CUDA: return "cuda:" + std::to_string(d.index());
    case DeviceType::Meta: return "meta";
    default: return "device type " + std::to_string(int(d.type()));
  }
}

std::string shape_name(const Tensor& t) {
  std::ostringstream s;
  s << '(';
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
  s << (t.dim() == 1 ? ",)" : ")");
  return s.str();
}

int64_t per_sample_numel(const Tensor& g) {
  int64_t n = 1;
  for (int64_t d = 1; d < g.dim(); ++d) n *= g.size(d);
  return n;
}

std::vector<Tensor> empty_sample_shaped(const std::vector<Tensor>& grads) {
  std::vector<Tensor> out;
  out.reserve(grads.size());
  for (const auto& g : grads) out.push_back(torch::stable::new_empty(g, g.sizes().slice(1)));
  return out;
}

bool all_finite(const Tensor& t) {
  if (t.numel() == 0) return true;
  const Tensor flag = torch::stable::to(call_unary("aten::all", call_unary("aten::isfinite", t)),
                                        torch::stable::Device(DeviceType::CPU));
  return *static_cast<const bool*>(flag.data_ptr());
}

NoiseParams make_noise_params(int64_t seed, int64_t offset, int64_t source) {
  NoiseParams p{};
  p.source = int(source);
  p.seed = uint64_t(seed);
  p.offset = uint64_t(offset);
  if (source == kSourceSecure) os_random_key(p.key);
  return p;
}

void check_float_tensor(const char* op, const std::string& name, const Tensor& t) {
  const auto st = t.scalar_type();
  STD_TORCH_CHECK(st == ScalarType::Float || st == ScalarType::Double ||
                      st == ScalarType::BFloat16 || st == ScalarType::Half,
                  op, ": ", name, " has dtype ", dtype_name(t),
                  "; supported: float32, float64, bfloat16, float16");
}

void check_finite(const char* op, const char* name, double v) {
  STD_TORCH_CHECK(std::isfinite(v), op, ": ", name, " must be finite, got ", v);
}

void check_non_negative(const char* op, const char* name, double v) {
  check_finite(op, name, v);
  STD_TORCH_CHECK(v >= 0, op, ": ", name, " must be >= 0, got ", v);
}

void check_grads(const char* op, const std::vector<Tensor>& grads) {
  STD_TORCH_CHECK(!grads.empty(), op, ": grads is empty");
  const Tensor& first = grads[0];
  for (size_t t = 0; t < grads.size(); ++t) {
    const Tensor& g = grads[t];
    const std::string name = "grads[" + std::to_string(t) + "]";
    check_float_tensor(op, name, g);
    STD_TORCH_CHECK(g.dim() >= 1, op, ": ", name, " must be shaped (B, *param_shape), got a 0-d tensor");
    STD_TORCH_CHECK(g.size(0) == first.size(0), op, ": mismatched batch size: grads[0] has B=",
                    first.size(0), ", ", name, " has B=", g.size(0));
    STD_TORCH_CHECK(g.device() == first.device(), op, ": mixed devices: grads[0] on ",
                    device_name(first), ", ", name, " on ", device_name(g));
    STD_TORCH_CHECK(g.scalar_type() == first.scalar_type(), op, ": mixed dtypes: grads[0] is ",
                    dtype_name(first), ", ", name, " is ", dtype_name(g));
  }
}

void check_noise_args(const char* op, double noise_std, double scale, int64_t source) {
  check_non_negative(op, "noise_std", noise_std);
  check_finite(op, "scale", scale);
  STD_TORCH_CHECK(source == kSourcePhilox || source == kSourceSecure, op,
                  ": source must be 0 (philox) or 1 (secure), got ", source);
}

void check_clip_and_noise_args(const std::vector<Tensor>& grads, double max_norm,
                               double noise_std, double scale, int64_t source) {
  const char* op = "clip_and_noise";
  check_grads(op, grads);
  check_finite(op, "max_norm", max_norm);
  STD_TORCH_CHECK(max_norm > 0, op, ": max_norm must be > 0, got ", max_norm);
  check_noise_args(op, noise_std, scale, source);
}

void check_accumulate_args(const std::vector<Tensor>& grads, const Tensor& factors,
                           double noise_std, double scale, int64_t source) {
  const char* op = "accumulate_and_noise";
  check_grads(op, grads);
  check_float_tensor(op, "factors", factors);
  const int64_t b = grads[0].size(0);
  STD_TORCH_CHECK(factors.dim() == 1 && factors.size(0) == b, op, ": factors must have shape (",
                  b, ",), got ", shape_name(factors));
  STD_TORCH_CHECK(factors.device() == grads[0].device(), op, ": factors on ",
                  device_name(factors), ", grads on ", device_name(grads[0]));
  check_noise_args(op, noise_std, scale, source);
}

void check_add_noise_args(const std::vector<Tensor>& tensors, double noise_std, double scale,
                          int64_t source) {
  const char* op = "add_noise_";
  check_noise_args(op, noise_std, scale, source);
  for (size_t t = 0; t < tensors.size(); ++t) {
    const std::string name = "tensors[" + std::to_string(t) + "]";
    check_float_tensor(op, name, tensors[t]);
    STD_TORCH_CHECK(tensors[t].device() == tensors[0].device(), op, ": mixed devices: tensors[0] on ",
                    device_name(tensors[0]), ", ", name, " on ", device_name(tensors[t]));
  }
}

void check_norms_finite(const char* op, int64_t first_bad_sample) {
  STD_TORCH_CHECK(first_bad_sample < 0, op, ": the per-sample gradient of sample ",
                  first_bad_sample, " has a non-finite norm (NaN/Inf in the gradient, or its ",
                  "squared norm overflows float32); refusing to return a noised sum");
}

void check_weighted_sum_finite(const char* op, const Tensor& sum, size_t tensor_index) {
  STD_TORCH_CHECK(all_finite(sum), op, ": the weighted sum of tensor ", tensor_index,
                  " is not finite (NaN/Inf in the per-sample gradients or factors)");
}

void check_step_args(const char* op, const Tensor& x, const Tensor& g, const Tensor& xo,
                     double alpha, double eps, double lo, double hi,
                     const std::optional<Tensor>& alpha_t, const std::optional<Tensor>& eps_t) {
  check_float_tensor(op, "x_adv", x);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad", &g}, {"x_orig", &xo}}) {
    STD_TORCH_CHECK(t->sizes() == x.sizes(), op, ": ", name, " has shape ", shape_name(*t),
                    ", x_adv has ", shape_name(x));
    STD_TORCH_CHECK(t->device() == x.device(), op, ": mixed devices: ", name, " on ",
                    device_name(*t), ", x_adv on ", device_name(x));
    STD_TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": mixed dtypes: ", name, " is ",
                    dtype_name(*t), ", x_adv is ", dtype_name(x));
  }
  check_finite(op, "lo", lo);
  check_finite(op, "hi", hi);
  STD_TORCH_CHECK(lo <= hi, op, ": lo (", lo, ") > hi (", hi, ")");
  check_non_negative(op, "alpha", alpha);
  check_non_negative(op, "eps", eps);
  for (const auto& [name, v] :
       {std::pair<const char*, const std::optional<Tensor>*>{"alpha", &alpha_t}, {"eps", &eps_t}}) {
    if (!v->has_value()) continue;
    const Tensor& t = v->value();
    check_float_tensor(op, name, t);
    const int64_t b = x.dim() ? x.size(0) : -1;
    STD_TORCH_CHECK(x.dim() >= 1 && t.dim() == 1 && t.size(0) == b, op, ": per-sample ", name,
                    " must have shape (B,) with B = x_adv.shape[0], got ", shape_name(t));
    STD_TORCH_CHECK(t.device() == x.device(), op, ": ", name, " on ", device_name(t),
                    ", x_adv on ", device_name(x));
  }
}

void check_row_sq_norms_args(const Tensor& x) {
  const char* op = "_row_sq_norms";
  check_float_tensor(op, "x", x);
  STD_TORCH_CHECK(x.dim() >= 1, op, ": x must be shaped (B, ...), got a 0-d tensor");
}

ConvGeometry check_conv_grad_args(const char* op, const Tensor& x, const Tensor& grad_out,
                                  const std::vector<int64_t>& kernel,
                                  const std::vector<int64_t>& stride,
                                  const std::vector<int64_t>& padding,
                                  const std::vector<int64_t>& dilation, int64_t groups) {
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"x", &x},
                                {"grad_out", &grad_out}}) {
    STD_TORCH_CHECK(t->scalar_type() == ScalarType::Float, op, ": ", name, " has dtype ",
                    dtype_name(*t), "; supported: float32");
    STD_TORCH_CHECK(t->dim() == 4, op, ": ", name, " must be 4-D (B, C, H, W), got shape ",
                    shape_name(*t));
  }
  STD_TORCH_CHECK(x.device() == grad_out.device(), op, ": x on ", device_name(x),
                  ", grad_out on ", device_name(grad_out));
  STD_TORCH_CHECK(x.size(0) == grad_out.size(0), op, ": x has B=", x.size(0),
                  ", grad_out has B=", grad_out.size(0));
  for (const auto& [name, v, least] :
       {std::tuple<const char*, const std::vector<int64_t>*, int64_t>{"kernel", &kernel, 1},
        {"stride", &stride, 1}, {"padding", &padding, 0}, {"dilation", &dilation, 1}}) {
    STD_TORCH_CHECK(v->size() == 2, op, ": ", name, " must have 2 entries, got ", v->size());
    STD_TORCH_CHECK((*v)[0] >= least && (*v)[1] >= least, op, ": ", name, " must be >= ",
                    least, ", got (", (*v)[0], ", ", (*v)[1], ")");
  }
  STD_TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0 && grad_out.size(1) % groups == 0,
                  op, ": groups=", groups, " must divide x's ", x.size(1),
                  " and grad_out's ", grad_out.size(1), " channels");
  ConvGeometry geo{};
  geo.c_in = x.size(1) / groups;
  geo.h = x.size(2);
  geo.w = x.size(3);
  geo.c_out = grad_out.size(1) / groups;
  geo.oh = grad_out.size(2);
  geo.ow = grad_out.size(3);
  geo.kh = kernel[0];
  geo.kw = kernel[1];
  geo.sh = stride[0];
  geo.sw = stride[1];
  geo.ph = padding[0];
  geo.pw = padding[1];
  geo.dh = dilation[0];
  geo.dw = dilation[1];
  const int64_t oh = (geo.h + 2 * geo.ph - geo.dh * (geo.kh - 1) - 1) / geo.sh + 1;
  const int64_t ow = (geo.w + 2 * geo.pw - geo.dw * (geo.kw - 1) - 1) / geo.sw + 1;
  STD_TORCH_CHECK(oh >= 1 && ow >= 1 && oh == geo.oh && ow == geo.ow, op,
                  ": grad_out's spatial size (", geo.oh, ", ", geo.ow,
                  ") is not the convolution's output size (", oh, ", ", ow, ") for x ",
                  shape_name(x));
  return geo;
}

Tensor new_conv_weight_grads(const Tensor& x, const ConvGeometry& geo, int64_t groups, bool keep) {
  if (!keep) return torch::stable::new_empty(x, {0});
  return torch::stable::new_empty(x, {x.size(0), geo.c_out * groups, geo.c_in, geo.kh, geo.kw});
}

void check_fill_normals_args(const Tensor& out, int64_t source, const std::vector<int64_t>& key) {
  STD_TORCH_CHECK(out.scalar_type() == ScalarType::Float && out.dim() == 1 && out.is_contiguous(),
                  "_fill_normals_: out must be a contiguous 1-D float32 tensor, got ",
                  dtype_name(out), " shaped ", shape_name(out));
  STD_TORCH_CHECK(source == kSourcePhilox || (source == kSourceSecure && key.size() == 8),
                  "_fill_normals_: source must be 0, or 1 with an 8-word key; got source ", source,
                  " and ", key.size(), " key words");
}

PerSampleValue per_sample_value(const char* op, const char* name, double scalar,
                                const std::optional<Tensor>& values, const Tensor& images) {
  PerSampleValue out;
  if (!values.has_value()) {
    out.host = {scalar};
    return out;
  }
  // Rounded to the op-math type first, as the reference holds them.
  const Tensor dev = torch::stable::contiguous(torch::stable::to(*values, opmath_of(images)));
  const Tensor host = torch::stable::contiguous(torch::stable::to(
      dev, ScalarType::Double, std::nullopt, torch::stable::Device(DeviceType::CPU)));
  const double* p = static_cast<const double*>(host.data_ptr());
  out.host.assign(p, p + host.numel());
  for (double v : out.host) {
    STD_TORCH_CHECK(std::isfinite(v), op, ": ", name, " has non-finite entries");
    STD_TORCH_CHECK(v >= 0, op, ": ", name, " has negative entries");
  }
  out.device = dev;
  return out;
}

}  // namespace msf
