// CUDA kernels of the adversarial steps (torch-free). The element math is
// csrc/common/step_math.h, shared with the CPU kernels; specification:
// modelsec_fast/reference.py (sign_step, l2_step).
#include "../common/step_math.h"
#include "cuda_common.cuh"
#include "launchers.h"

namespace msf::cuda {
namespace {

template <typename T, typename Acc>
__global__ void sign_step_kernel(T* out, const T* x, const T* g, const T* xo, int64_t n,
                                 int64_t per, Acc alpha, Acc eps, const Acc* alpha_ps,
                                 const Acc* eps_ps, Acc lo, Acc hi) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = per ? j / per : 0;
    const Acc a = alpha_ps ? alpha_ps[i] : alpha;
    const Acc e = eps_ps ? eps_ps[i] : eps;
    out[j] = sign_step_elem<T, Acc>(x[j], g[j], xo[j], a, e, lo, hi);
  }
}

// den[i] = ||g_i|| + 1e-10, one block per sample.
template <typename T, typename Acc>
__global__ void l2_grad_norm_kernel(const T* g, int64_t per, Acc* den) {
  const Acc s = block_row_sum_squares<T, Acc>(g + int64_t(blockIdx.x) * per, per);
  if (threadIdx.x == 0) den[blockIdx.x] = Acc(sqrt(s)) + Acc(kL2GradEps);
}

template <typename T, typename Acc>
__device__ __forceinline__ Acc l2_delta(const T* x, const T* g, const T* xo, int64_t j, Acc a,
                                        Acc den) {
  return (Acc(x[j]) + a * (Acc(g[j]) / den)) - Acc(xo[j]);
}

// factor[i] = min(1, eps_i / ||delta_i||), one block per sample; overwrites den with factor.
template <typename T, typename Acc>
__global__ void l2_factor_kernel(const T* x, const T* g, const T* xo, int64_t per, Acc alpha,
                                 Acc eps, const Acc* alpha_ps, const Acc* eps_ps, const Acc* den,
                                 Acc* factor) {
  const int64_t i = blockIdx.x;
  const Acc a = alpha_ps ? alpha_ps[i] : alpha;
  const Acc e = eps_ps ? eps_ps[i] : eps;
  Acc s = 0;
  for (int64_t j = i * per + threadIdx.x; j < (i + 1) * per; j += blockDim.x) {
    const Acc d = l2_delta<T, Acc>(x, g, xo, j, a, den[i]);
    s += d * d;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) factor[i] = l2_projection_factor<Acc>(Acc(sqrt(s)), e);
}

template <typename T, typename Acc>
__global__ void l2_apply_kernel(T* out, const T* x, const T* g, const T* xo, int64_t n, int64_t per,
                                Acc alpha, const Acc* alpha_ps, const Acc* den, const Acc* factor,
                                Acc lo, Acc hi) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = j / per;
    const Acc a = alpha_ps ? alpha_ps[i] : alpha;
    const Acc d = l2_delta<T, Acc>(x, g, xo, j, a, den[i]);
    out[j] = T(clamp_nan<Acc>(Acc(xo[j]) + d * factor[i], lo, hi));
  }
}

}  // namespace

const char* launch_sign_step(DType dtype, void* out, const void* x, const void* g, const void* xo,
                             int64_t n, int64_t per, double alpha, double eps, const void* alpha_ps,
                             const void* eps_ps, double lo, double hi, void* stream) {
  if (n == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, [&]<typename T, typename Acc>() {
    sign_step_kernel<T, Acc><<<grid_for(n), kThreads, 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(x), static_cast<const T*>(g),
        static_cast<const T*>(xo), n, per, Acc(alpha), Acc(eps), static_cast<const Acc*>(alpha_ps),
        static_cast<const Acc*>(eps_ps), Acc(lo), Acc(hi));
  });
}

const char* launch_l2_step(DType dtype, void* out, const void* x, const void* g, const void* xo,
                           int64_t B, int64_t per, double alpha, double eps, const void* alpha_ps,
                           const void* eps_ps, double lo, double hi, void* scratch, void* stream) {
  if (B == 0 || per == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, [&]<typename T, typename Acc>() {
    Acc* den = static_cast<Acc*>(scratch);
    Acc* factor = den + B;
    const T* xp = static_cast<const T*>(x);
    const T* gp = static_cast<const T*>(g);
    const T* xop = static_cast<const T*>(xo);
    const Acc* aps = static_cast<const Acc*>(alpha_ps);
    l2_grad_norm_kernel<T, Acc><<<unsigned(B), kThreads, 0, s>>>(gp, per, den);
    l2_factor_kernel<T, Acc><<<unsigned(B), kThreads, 0, s>>>(
        xp, gp, xop, per, Acc(alpha), Acc(eps), aps, static_cast<const Acc*>(eps_ps), den, factor);
    l2_apply_kernel<T, Acc><<<grid_for(B * per), kThreads, 0, s>>>(
        static_cast<T*>(out), xp, gp, xop, B * per, per, Acc(alpha), aps, den, factor, Acc(lo),
        Acc(hi));
  });
}

}  // namespace msf::cuda
