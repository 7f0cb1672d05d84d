// Constants of the specification, defined once in modelsec_fast/reference.py:
// CMakeLists.txt (and the nvcc compile test) read them there and pass them as
// MSF_* macros, so Python and C++ cannot disagree.
#pragma once

#include <cstdint>

#if !defined(MSF_CLIP_EPS) || !defined(MSF_L2_GRAD_EPS) || !defined(MSF_NOISE_DOMAIN)
#error "MSF_CLIP_EPS, MSF_L2_GRAD_EPS and MSF_NOISE_DOMAIN come from modelsec_fast/reference.py; build through CMakeLists.txt"
#endif

namespace msf {

// Opacus's clipping denominator guard: c_i = min(1, C / (n_i + CLIP_EPS)), in fp32.
constexpr float kClipEps = float(MSF_CLIP_EPS);
// Zero-gradient guard of the L2 step: g / (||g|| + L2_GRAD_EPS).
constexpr double kL2GradEps = MSF_L2_GRAD_EPS;
// Counter word 3 of every noise stream ("MSF1"): keeps our Philox counters
// apart from torch's when a CUDA generator's seed is shared.
constexpr uint32_t kNoiseDomain = uint32_t(MSF_NOISE_DOMAIN);

}  // namespace msf
