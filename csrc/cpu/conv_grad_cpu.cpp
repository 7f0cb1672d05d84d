// CPU entry point of _conv_weight_grad_norms (LibTorch stable ABI): per-sample
// weight gradients of a 2-D convolution and their squared norms, one sample
// and group per work item around conv_weight_grad of conv_grad_isa.cpp.
// Specification: reference.conv_weight_grad_norms; schema: modelsec_fast/_native.py.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <tuple>
#include <vector>

#include "../op_common.h"
#include "kernels.h"

namespace msf::cpu {
namespace {

std::tuple<Tensor, Tensor> conv_weight_grad_norms_cpu(const Tensor& x, const Tensor& grad_out,
                                                      std::vector<int64_t> kernel,
                                                      std::vector<int64_t> stride,
                                                      std::vector<int64_t> padding,
                                                      std::vector<int64_t> dilation,
                                                      int64_t groups, bool keep) {
  const ConvGeometry geo =
      check_conv_grad_args("_conv_weight_grad_norms", x, grad_out, kernel, stride, padding,
                           dilation, groups);
  const Tensor xc = torch::stable::contiguous(x), gc = torch::stable::contiguous(grad_out);
  const int64_t B = x.size(0);
  const int64_t d = geo.c_in * geo.kh * geo.kw;
  Tensor grads = new_conv_weight_grads(x, geo, groups, keep);
  std::vector<double> partial(size_t(B * groups), 0.0);
  const auto& ks = kernels();
  const int64_t x_group = geo.c_in * geo.h * geo.w, g_group = geo.c_out * geo.oh * geo.ow;
  const float* xp = static_cast<const float*>(xc.data_ptr());
  const float* gp = static_cast<const float*>(gc.data_ptr());
  float* out = keep ? static_cast<float*>(grads.data_ptr()) : nullptr;
  torch::stable::parallel_for(0, B * groups, 1, [&](int64_t b, int64_t e) {
    std::vector<float> scratch(size_t(ks.conv_grad_scratch(geo)));
    for (int64_t k = b; k < e; ++k)  // k = sample * groups + group, the tensors' order
      partial[size_t(k)] = ks.conv_weight_grad(xp + k * x_group, gp + k * g_group, geo,
                                               out ? out + k * geo.c_out * d : nullptr,
                                               scratch.data());
  });
  Tensor sq = torch::stable::new_empty(x, {B});
  float* sq_p = static_cast<float*>(sq.data_ptr());
  for (int64_t i = 0; i < B; ++i) {
    double s = 0.0;  // groups in order: independent of the thread count
    for (int64_t gi = 0; gi < groups; ++gi) s += partial[size_t(i * groups + gi)];
    sq_p[i] = float(s);
  }
  return {sq, grads};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(modelsec_fast, CPU, m) {
  m.impl("_conv_weight_grad_norms", TORCH_BOX(&conv_weight_grad_norms_cpu));
}

}  // namespace msf::cpu
