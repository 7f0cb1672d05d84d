// Element math of the adversarial steps, shared by the CPU and CUDA kernels.
//
// Specification: modelsec_fast/reference.py (sign_step, l2_step). Each
// function rounds to the element type T after every operation, as the eager
// ATen ops of the reference do, so fp32 results are bit-identical to it.
#pragma once

#include "rng.h"  // MSF_HD
#include "spec_constants.h"

namespace msf {

// torch.sign: NaN -> 0.
template <typename Acc>
MSF_HD Acc sign_of(Acc g) {
  return Acc(Acc(0) < g) - Acc(g < Acc(0));
}

// torch.clamp: min(max(v, lo), hi) with NaN propagating (both compares are
// false for NaN), written as selects so loops vectorise.
template <typename Acc>
MSF_HD Acc clamp_nan(Acc v, Acc lo, Acc hi) {
  const Acc m = v < lo ? lo : v;
  return m > hi ? hi : m;
}

// clamp(x_orig + clamp(x_adv + alpha*sign(grad) - x_orig, -eps, eps), lo, hi),
// each op rounded to T. Acc is the op-math type (float for half/bf16/float).
template <typename T, typename Acc>
MSF_HD T sign_step_elem(T x_adv, T grad, T x_orig, Acc alpha, Acc eps, Acc lo, Acc hi) {
  const T step = T(alpha * sign_of<Acc>(Acc(grad)));
  const T stepped = T(Acc(x_adv) + Acc(step));
  const T delta = T(Acc(stepped) - Acc(x_orig));
  const T clipped = T(clamp_nan<Acc>(Acc(delta), -eps, eps));
  const T moved = T(Acc(x_orig) + Acc(clipped));
  return T(clamp_nan<Acc>(Acc(moved), lo, hi));
}

// Opacus's per-sample clip factor min(1, max_norm / (norm + CLIP_EPS)), in fp32.
MSF_HD float clip_factor(float norm, float max_norm) {
  const float f = max_norm / (norm + kClipEps);
  return f < 1.0f ? f : 1.0f;
}

// PGD-L2 projection factor min(1, eps / ||delta||), 1 when ||delta|| <= eps.
template <typename Acc>
MSF_HD Acc l2_projection_factor(Acc delta_norm, Acc eps) {
  return delta_norm > eps ? eps / delta_norm : Acc(1);
}

}  // namespace msf
