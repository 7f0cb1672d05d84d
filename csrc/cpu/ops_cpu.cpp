// CPU implementations of the modelsec_fast ops (LibTorch stable ABI): checks,
// memory layout and torch::stable::parallel_for around the inner loops of
// kernels_isa.cpp. Specification: modelsec_fast/reference.py; the schemas are
// defined in modelsec_fast/_native.py.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "../common/step_math.h"
#include "../op_common.h"
#include "kernels.h"

namespace msf::cpu {
namespace {

using torch::stable::parallel_for;

constexpr int64_t kNoiseChunk = 8192;   // elements per parallel noise work item (multiple of 4)
constexpr int64_t kStepGrain = 32768;   // elements per parallel step work item
constexpr int64_t kMaxSampleChunks = 8; // fixed sample partition: result independent of threads
constexpr int64_t kSampleGroup = 4;     // samples normed, then accumulated together (rows in L2/L3)
constexpr int64_t kAccTile = 4096;      // accumulator elements updated per pass (fits L1)
constexpr int64_t kSquaresBlock = 512;  // elements summed in op-math lanes before double
constexpr int64_t kRowChunk = 65536;    // elements of one row per parallel work item

// (tensor index, first element, length) work items over several tensors.
struct Item {
  int t;
  int64_t start, len;
};

std::vector<Item> noise_items(const std::vector<int64_t>& sizes) {
  std::vector<Item> items;
  for (size_t t = 0; t < sizes.size(); ++t)
    for (int64_t s = 0; s < sizes[t]; s += kNoiseChunk)
      items.push_back({int(t), s, std::min(kNoiseChunk, sizes[t] - s)});
  return items;
}

std::tuple<std::vector<Tensor>, Tensor> clip_and_noise_cpu(std::vector<Tensor> grads,
                                                           double max_norm, double noise_std,
                                                           double scale, int64_t seed,
                                                           int64_t offset, int64_t source) {
  const char* op = "clip_and_noise";
  check_clip_and_noise_args(grads, max_norm, noise_std, scale, source);
  const auto& ks = kernels();
  const DType dt = dtype_of(grads[0]);
  const int64_t B = grads[0].size(0);
  const int T = int(grads.size());
  std::vector<Tensor> g(T);
  std::vector<int64_t> sizes(T), offs(T + 1, 0);
  for (int t = 0; t < T; ++t) {
    g[t] = torch::stable::contiguous(grads[t]);
    sizes[t] = per_sample_numel(grads[t]);
    offs[t + 1] = offs[t] + sizes[t];
  }
  const int64_t P = offs[T];
  const int64_t elem = g[0].element_size();
  const int64_t K = std::min<int64_t>(B, kMaxSampleChunks);
  // One op-math accumulator row per sample chunk; chunk k sums its samples in order.
  Tensor acc = torch::stable::new_zeros(grads[0], {std::max<int64_t>(K, 1), P}, opmath_of(grads[0]));
  Tensor norms = torch::stable::new_empty(grads[0], {B}, ScalarType::Float);
  float* norms_p = static_cast<float*>(norms.data_ptr());
  const int64_t acc_elem = acc.element_size();
  char* acc_p = static_cast<char*>(acc.data_ptr());
  std::atomic<int64_t> bad_sample{B};
  const float max_norm_f = float(max_norm);
  const bool f64 = dt == DType::F64;
  parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
    float factor[kSampleGroup];
    for (int64_t k = k0; k < k1; ++k) {
      char* row_acc = acc_p + k * P * acc_elem;
      const int64_t first = k * B / K, last = (k + 1) * B / K;
      for (int64_t i0 = first; i0 < last; i0 += kSampleGroup) {
        const int64_t group = std::min(kSampleGroup, last - i0);
        for (int64_t gi = 0; gi < group; ++gi) {
          const int64_t i = i0 + gi;
          // Norm in op-math, summed over tensors in order (as the reference).
          double sq = 0;
          for (int t = 0; t < T; ++t) {
            const double part = ks.sum_squares(dt, static_cast<const char*>(g[t].data_ptr()) +
                                                       i * sizes[t] * elem, sizes[t]);
            sq = f64 ? sq + part : double(float(sq) + float(part));
          }
          const float n = f64 ? float(std::sqrt(sq)) : std::sqrt(float(sq));
          norms_p[i] = n;
          factor[gi] = std::isfinite(n) ? clip_factor(n, max_norm_f) : 0.0f;
          if (!std::isfinite(n)) {
            int64_t cur = bad_sample.load();
            while (i < cur && !bad_sample.compare_exchange_weak(cur, i)) {}
          }
        }
        // Accumulate the group while its rows are still in cache, one
        // accumulator tile at a time so the tile stays in L1 (samples in order).
        for (int t = 0; t < T; ++t)
          for (int64_t start = 0; start < sizes[t]; start += kAccTile) {
            const int64_t len = std::min(kAccTile, sizes[t] - start);
            for (int64_t gi = 0; gi < group; ++gi)
              ks.axpy(dt, static_cast<const char*>(g[t].data_ptr()) +
                              ((i0 + gi) * sizes[t] + start) * elem,
                      len, double(factor[gi]), row_acc + (offs[t] + start) * acc_elem);
          }
      }
    }
  });
  check_norms_finite(op, bad_sample.load() == B ? -1 : bad_sample.load());
  auto out = empty_sample_shaped(grads);
  const NoiseStream base_stream = make_noise_params(seed, offset, source);
  const auto items = noise_items(sizes);
  const int count = int(std::max<int64_t>(K, 1));
  parallel_for(0, int64_t(items.size()), 1, [&](int64_t b, int64_t e) {
    std::vector<void*> rows(count);
    for (int64_t w = b; w < e; ++w) {
      const Item& it = items[w];
      for (int k = 0; k < count; ++k)
        rows[k] = acc_p + (int64_t(k) * P + offs[it.t] + it.start) * acc_elem;
      ks.sum_into_first(dt, rows.data(), count, it.len);
      NoiseStream s = base_stream;
      s.tensor_index = uint32_t(it.t);
      ks.add_noise(dt, static_cast<char*>(out[it.t].data_ptr()) + it.start * elem, rows[0],
                   it.len, it.start, noise_std, scale, s);
    }
  });
  return {out, norms};
}

std::vector<Tensor> accumulate_and_noise_cpu(std::vector<Tensor> grads, const Tensor& factors,
                                             double noise_std, double scale, int64_t seed,
                                             int64_t offset, int64_t source) {
  const char* op = "accumulate_and_noise";
  check_accumulate_args(grads, factors, noise_std, scale, source);
  const int64_t B = grads[0].size(0);
  const auto& ks = kernels();
  const DType dt = dtype_of(grads[0]);
  const int T = int(grads.size());
  std::vector<Tensor> g(T);
  std::vector<int64_t> sizes(T);
  for (int t = 0; t < T; ++t) {
    g[t] = torch::stable::contiguous(grads[t]);
    sizes[t] = per_sample_numel(grads[t]);
  }
  // Rounded to the op-math type first, as the reference applies them.
  const Tensor f = torch::stable::contiguous(
      torch::stable::to(torch::stable::to(factors, opmath_of(grads[0])), ScalarType::Double));
  const double* f_p = static_cast<const double*>(f.data_ptr());
  const std::vector<double> fv(f_p, f_p + B);
  const int64_t elem = g[0].element_size();
  const bool f64 = dt == DType::F64;
  auto out = empty_sample_shaped(grads);
  const NoiseStream base_stream = make_noise_params(seed, offset, source);
  const auto items = noise_items(sizes);
  parallel_for(0, int64_t(items.size()), 1, [&](int64_t b, int64_t e) {
    std::vector<double> acc_d(f64 ? kNoiseChunk : 0);
    std::vector<float> acc_f(f64 ? 0 : kNoiseChunk);
    void* acc = f64 ? static_cast<void*>(acc_d.data()) : static_cast<void*>(acc_f.data());
    for (int64_t w = b; w < e; ++w) {
      const Item& it = items[w];
      std::fill(acc_d.begin(), acc_d.end(), 0.0);
      std::fill(acc_f.begin(), acc_f.end(), 0.0f);
      // Samples in order: one read of each gradient, no dependence on threads.
      for (int64_t i = 0; i < B; ++i)
        ks.axpy(dt, static_cast<const char*>(g[it.t].data_ptr()) + (i * sizes[it.t] + it.start) * elem,
                it.len, fv[i], acc);
      NoiseStream s = base_stream;
      s.tensor_index = uint32_t(it.t);
      ks.add_noise(dt, static_cast<char*>(out[it.t].data_ptr()) + it.start * elem, acc, it.len,
                   it.start, noise_std, scale, s);
    }
  });
  for (int t = 0; t < T; ++t) check_weighted_sum_finite(op, out[t], size_t(t));
  return out;
}

void add_noise_cpu(std::vector<Tensor> tensors, double noise_std, double scale, int64_t seed,
                   int64_t offset, int64_t source) {
  check_add_noise_args(tensors, noise_std, scale, source);
  const int T = int(tensors.size());
  std::vector<Tensor> work(T);
  std::vector<int64_t> sizes(T);
  for (int t = 0; t < T; ++t) {
    work[t] = torch::stable::contiguous(tensors[t]);
    sizes[t] = work[t].numel();
  }
  const auto& ks = kernels();
  const NoiseStream base_stream = make_noise_params(seed, offset, source);
  const auto items = noise_items(sizes);
  parallel_for(0, int64_t(items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      const Item& it = items[w];
      NoiseStream s = base_stream;
      s.tensor_index = uint32_t(it.t);
      const Tensor& x = work[it.t];
      ks.add_noise(dtype_of(x), static_cast<char*>(x.data_ptr()) + it.start * x.element_size(),
                   nullptr, it.len, it.start, noise_std, scale, s);
    }
  });
  // contiguous() returned the tensor itself when it already was; otherwise write back.
  for (int t = 0; t < T; ++t)
    if (!tensors[t].is_contiguous()) torch::stable::copy_(tensors[t], work[t]);
}

// Runs the sign step into `out` (contiguous, same shape as x_adv).
void sign_step_into(const char* op, const Tensor& out, const Tensor& x_adv, const Tensor& grad,
                    const Tensor& x_orig, double alpha, double eps, double lo, double hi,
                    const std::optional<Tensor>& alpha_t, const std::optional<Tensor>& eps_t) {
  const Tensor x = torch::stable::contiguous(x_adv), g = torch::stable::contiguous(grad),
               xo = torch::stable::contiguous(x_orig);
  const int64_t n = x.numel();
  const int64_t B = x.dim() ? x.size(0) : 1;
  const int64_t per = B ? n / B : 0;
  const PerSampleValue av = per_sample_value(op, "alpha", alpha, alpha_t, x);
  const PerSampleValue ev = per_sample_value(op, "eps", eps, eps_t, x);
  const bool uniform = !alpha_t.has_value() && !eps_t.has_value();
  const auto& ks = kernels();
  const DType dt = dtype_of(x);
  const int64_t es = x.element_size();
  char* o = static_cast<char*>(out.data_ptr());
  const char* xp = static_cast<const char*>(x.data_ptr());
  const char* gp = static_cast<const char*>(g.data_ptr());
  const char* op_ = static_cast<const char*>(xo.data_ptr());
  parallel_for(0, n, kStepGrain, [&](int64_t b, int64_t e) {
    if (uniform) {
      ks.sign_step(dt, o + b * es, xp + b * es, gp + b * es, op_ + b * es, e - b, av.at(0),
                   ev.at(0), lo, hi);
      return;
    }
    for (int64_t j = b; j < e;) {
      const int64_t i = j / per;
      const int64_t stop = std::min(e, (i + 1) * per);
      ks.sign_step(dt, o + j * es, xp + j * es, gp + j * es, op_ + j * es, stop - j, av.at(i),
                   ev.at(i), lo, hi);
      j = stop;
    }
  });
}

Tensor sign_step_cpu(const Tensor& x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
                     double eps, double lo, double hi, std::optional<Tensor> alpha_t,
                     std::optional<Tensor> eps_t) {
  check_step_args("sign_step", x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  Tensor out = torch::stable::new_empty(x_adv, x_adv.sizes());
  sign_step_into("sign_step", out, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  return out;
}

void sign_step_inplace_cpu(Tensor x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
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

Tensor l2_step_cpu(const Tensor& x_adv, const Tensor& grad, const Tensor& x_orig, double alpha,
                   double eps, double lo, double hi, std::optional<Tensor> alpha_t,
                   std::optional<Tensor> eps_t) {
  const char* op = "l2_step";
  check_step_args(op, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t);
  STD_TORCH_CHECK(x_adv.dim() >= 1, op, ": x_adv must be shaped (B, ...), got a 0-d tensor");
  const Tensor x = torch::stable::contiguous(x_adv), g = torch::stable::contiguous(grad),
               xo = torch::stable::contiguous(x_orig);
  Tensor out = torch::stable::new_empty(x, x.sizes());
  const int64_t B = x.size(0);
  const int64_t per = B ? x.numel() / B : 0;
  const PerSampleValue av = per_sample_value(op, "alpha", alpha, alpha_t, x);
  const PerSampleValue ev = per_sample_value(op, "eps", eps, eps_t, x);
  const auto& ks = kernels();
  const DType dt = dtype_of(x);
  const int64_t es = x.element_size();
  const int64_t acc_es = dt == DType::F64 ? 8 : 4;
  parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
    std::vector<char> scratch(size_t(per * acc_es));
    for (int64_t i = b; i < e; ++i) {
      const int64_t off = i * per * es;
      ks.l2_step(dt, static_cast<char*>(out.data_ptr()) + off,
                 static_cast<const char*>(x.data_ptr()) + off,
                 static_cast<const char*>(g.data_ptr()) + off,
                 static_cast<const char*>(xo.data_ptr()) + off, per, av.at(i), ev.at(i), lo, hi,
                 scratch.data());
    }
  });
  return out;
}

// Rows of x as (B, n): each row's sum of squares, blocks of kSquaresBlock summed in
// op-math lanes (kernels' sum_squares), the blocks in double, in order; rows are split
// into kRowChunk pieces for the threads, whose partial sums are added in order, so the
// result does not depend on the thread count. Reads x once and allocates nothing of
// x's size (an ATen vecdot writes x * x first: fresh pages, at 8 bytes per element).
Tensor row_sq_norms_cpu(Tensor x) {
  check_row_sq_norms_args(x);
  const Tensor c = torch::stable::contiguous(x);
  const int64_t B = c.size(0);
  const int64_t n = B > 0 ? c.numel() / B : 0;
  const ScalarType acc = opmath_of(c);
  Tensor out = torch::stable::new_empty(c, {B}, acc);
  const int64_t chunks = std::max<int64_t>(1, (n + kRowChunk - 1) / kRowChunk);
  std::vector<double> partial(size_t(B * chunks), 0.0);
  const auto& ks = kernels();
  const DType dt = dtype_of(c);
  const int64_t elem = c.element_size();
  const char* base = static_cast<const char*>(c.data_ptr());
  parallel_for(0, B * chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      const int64_t i = w / chunks, start = (w % chunks) * kRowChunk;
      const int64_t stop = std::min(n, start + kRowChunk);
      double s = 0;
      for (int64_t j = start; j < stop; j += kSquaresBlock)
        s += ks.sum_squares(dt, base + (i * n + j) * elem, std::min(kSquaresBlock, stop - j));
      partial[size_t(w)] = s;
    }
  });
  for (int64_t i = 0; i < B; ++i) {
    double s = 0;
    for (int64_t k = 0; k < chunks; ++k) s += partial[size_t(i * chunks + k)];
    if (acc == ScalarType::Double)
      static_cast<double*>(out.data_ptr())[i] = s;
    else
      static_cast<float*>(out.data_ptr())[i] = float(s);
  }
  return out;
}

void fill_normals_cpu(Tensor out, int64_t seed, int64_t offset, int64_t tensor_index,
                      int64_t source, std::vector<int64_t> key) {
  check_fill_normals_args(out, source, key);
  NoiseStream s = make_noise_params(seed, offset, kSourcePhilox);
  s.source = int(source);
  s.tensor_index = uint32_t(tensor_index);
  for (size_t w = 0; w < key.size() && w < 8; ++w) s.key[w] = uint32_t(key[w]);
  const auto& ks = kernels();
  float* p = static_cast<float*>(out.data_ptr());
  const int64_t n = out.numel();
  parallel_for(0, (n + kNoiseChunk - 1) / kNoiseChunk, 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      const int64_t start = w * kNoiseChunk;
      ks.normals(p + start, std::min(kNoiseChunk, n - start), start, s);
    }
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(modelsec_fast, CPU, m) {
  m.impl("clip_and_noise", TORCH_BOX(&clip_and_noise_cpu));
  m.impl("accumulate_and_noise", TORCH_BOX(&accumulate_and_noise_cpu));
  m.impl("add_noise_", TORCH_BOX(&add_noise_cpu));
  m.impl("sign_step", TORCH_BOX(&sign_step_cpu));
  m.impl("sign_step_", TORCH_BOX(&sign_step_inplace_cpu));
  m.impl("l2_step", TORCH_BOX(&l2_step_cpu));
  m.impl("_fill_normals_", TORCH_BOX(&fill_normals_cpu));
  m.impl("_row_sq_norms", TORCH_BOX(&row_sq_norms_cpu));
}

}  // namespace msf::cpu
