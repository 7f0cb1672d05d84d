// CPU inner loops (see kernels.h), compiled once per instruction set with
// MSF_ISA naming the namespace. Loops are written lane-wise over fixed-size
// batches so the compiler vectorises them without -ffast-math, and every
// reduction has a fixed order, so results do not depend on the thread count.
#include "kernels.h"

// Header-only element types (no libtorch symbols): conversions round to nearest even, as ATen.
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cmath>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../common/rng.h"
#include "../common/step_math.h"

#ifndef MSF_ISA
#error "compile with -DMSF_ISA=<namespace>"
#endif

namespace msf::cpu::MSF_ISA {
namespace {

constexpr int kLanes = 64;          // noise blocks generated together (independent
                                    // vectors in flight hide the log/sincos latency)
constexpr int kBatch = 4 * kLanes;  // noise elements per batch
constexpr int kSumLanes = 32;       // independent partial sums in reductions

template <typename Acc>
Acc tree_sum(Acc* lanes) {
  for (int w = kSumLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  return lanes[0];
}

template <typename T, typename Acc>
double sum_squares_t(const T* x, int64_t n) {
  Acc lanes[kSumLanes] = {};
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes)
    for (int l = 0; l < kSumLanes; ++l) {
      const Acc v = Acc(x[j + l]);
      lanes[l] += v * v;
    }
  for (int l = 0; j + l < n; ++l) {
    const Acc v = Acc(x[j + l]);
    lanes[l] += v * v;
  }
  return double(tree_sum(lanes));
}

template <typename T, typename Acc>
void axpy_t(const T* x, int64_t n, Acc c, Acc* acc) {
  for (int64_t j = 0; j < n; ++j) acc[j] += c * Acc(x[j]);
}

template <typename Acc>
void sum_into_first_t(Acc* const* accs, int count, int64_t n) {
  Acc* dst = accs[0];
  for (int k = 1; k < count; ++k) {
    const Acc* src = accs[k];
    for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
  }
}

// Philox-4x32-10 on kLanes consecutive blocks: words[w][l] = word w of block block0 + l.
// Compilers turn the 32x32->64 multiply into a slow 64x64 one (vpmullq), so
// the x86 variants use the even/odd 32-bit multiply (vpmuludq) explicitly.
#if defined(__AVX512F__)
inline void mulhilo(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

void philox_words(uint32_t (*w)[kLanes], uint32_t key0, uint32_t key1) {
  static_assert(kLanes % 32 == 0, "two zmm registers per word per step");
  const __m512i m0 = _mm512_set1_epi32(int(0xD2511F53u)), m1 = _mm512_set1_epi32(int(0xCD9E8D57u));
  // Two independent 16-lane groups per pass: their multiplies overlap.
  for (int g = 0; g < kLanes; g += 32) {
    __m512i a0 = _mm512_loadu_si512(w[0] + g), a1 = _mm512_loadu_si512(w[1] + g);
    __m512i a2 = _mm512_loadu_si512(w[2] + g), a3 = _mm512_loadu_si512(w[3] + g);
    __m512i b0 = _mm512_loadu_si512(w[0] + g + 16), b1 = _mm512_loadu_si512(w[1] + g + 16);
    __m512i b2 = _mm512_loadu_si512(w[2] + g + 16), b3 = _mm512_loadu_si512(w[3] + g + 16);
    uint32_t k0 = key0, k1 = key1;
    for (int r = 0; r < 10; ++r) {
      const __m512i kk0 = _mm512_set1_epi32(int(k0)), kk1 = _mm512_set1_epi32(int(k1));
      __m512i ahi0, alo0, ahi1, alo1, bhi0, blo0, bhi1, blo1;
      mulhilo(a0, m0, ahi0, alo0);
      mulhilo(b0, m0, bhi0, blo0);
      mulhilo(a2, m1, ahi1, alo1);
      mulhilo(b2, m1, bhi1, blo1);
      a0 = _mm512_ternarylogic_epi32(ahi1, a1, kk0, 0x96);  // a ^ b ^ c
      b0 = _mm512_ternarylogic_epi32(bhi1, b1, kk0, 0x96);
      a2 = _mm512_ternarylogic_epi32(ahi0, a3, kk1, 0x96);
      b2 = _mm512_ternarylogic_epi32(bhi0, b3, kk1, 0x96);
      a1 = alo1; b1 = blo1;
      a3 = alo0; b3 = blo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm512_storeu_si512(w[0] + g, a0); _mm512_storeu_si512(w[1] + g, a1);
    _mm512_storeu_si512(w[2] + g, a2); _mm512_storeu_si512(w[3] + g, a3);
    _mm512_storeu_si512(w[0] + g + 16, b0); _mm512_storeu_si512(w[1] + g + 16, b1);
    _mm512_storeu_si512(w[2] + g + 16, b2); _mm512_storeu_si512(w[3] + g + 16, b3);
  }
}
#elif defined(__AVX2__)
inline void mulhilo(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

void philox_words(uint32_t (*w)[kLanes], uint32_t key0, uint32_t key1) {
  const __m256i m0 = _mm256_set1_epi32(int(0xD2511F53u)), m1 = _mm256_set1_epi32(int(0xCD9E8D57u));
  for (int half = 0; half < kLanes; half += 8) {
    auto load = [&](int word) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[word] + half)); };
    __m256i c0 = load(0), c1 = load(1), c2 = load(2), c3 = load(3);
    uint32_t k0 = key0, k1 = key1;
    for (int r = 0; r < 10; ++r) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo(c0, m0, hi0, lo0);
      mulhilo(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(int(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(int(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[0] + half), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[1] + half), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[2] + half), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[3] + half), c3);
  }
}
#else
void philox_words(uint32_t (*w)[kLanes], uint32_t k0, uint32_t k1) {
  for (int l = 0; l < kLanes; ++l) philox4x32_10(w[0][l], w[1][l], w[2][l], w[3][l], k0, k1);
}
#endif

// 4 * kLanes Philox normals of blocks [block0, block0 + kLanes), element order.
void philox_batch(const NoiseStream& s, uint64_t block0, float* z) {
  alignas(64) uint32_t w[4][kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t b = s.offset + block0 + uint64_t(l);
    w[0][l] = uint32_t(b);
    w[1][l] = uint32_t(b >> 32);
    w[2][l] = s.tensor_index;
    w[3][l] = kNoiseDomain;
  }
  philox_words(w, uint32_t(s.seed), uint32_t(s.seed >> 32));
  float za[kLanes], zb[kLanes], zc[kLanes], zd[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    box_muller(w[0][l], w[1][l], za[l], zb[l]);
    box_muller(w[2][l], w[3][l], zc[l], zd[l]);
  }
  for (int l = 0; l < kLanes; ++l) {
    z[4 * l] = za[l];
    z[4 * l + 1] = zb[l];
    z[4 * l + 2] = zc[l];
    z[4 * l + 3] = zd[l];
  }
}

// 4 * kLanes secure normals of ChaCha20 blocks [block0, block0 + kLanes).
void chacha_batch(const NoiseStream& s, uint64_t block0, float* z) {
  uint32_t init[16][kLanes], x[16][kLanes];
  static constexpr uint32_t kConst[4] = {0x61707865u, 0x3320646Eu, 0x79622D32u, 0x6B206574u};
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t b = block0 + uint64_t(l);
    for (int w = 0; w < 4; ++w) init[w][l] = kConst[w];
    for (int w = 0; w < 8; ++w) init[4 + w][l] = s.key[w];
    init[12][l] = uint32_t(b);
    init[13][l] = uint32_t(b >> 32);
    init[14][l] = s.tensor_index;
    init[15][l] = kNoiseDomain;
  }
  for (int w = 0; w < 16; ++w)
    for (int l = 0; l < kLanes; ++l) x[w][l] = init[w][l];
  auto quarter = [&x](int a, int b, int c, int d) {
    for (int l = 0; l < kLanes; ++l) {
      x[a][l] += x[b][l]; x[d][l] = rotl32(x[d][l] ^ x[a][l], 16);
      x[c][l] += x[d][l]; x[b][l] = rotl32(x[b][l] ^ x[c][l], 12);
      x[a][l] += x[b][l]; x[d][l] = rotl32(x[d][l] ^ x[a][l], 8);
      x[c][l] += x[d][l]; x[b][l] = rotl32(x[b][l] ^ x[c][l], 7);
    }
  };
  for (int r = 0; r < 10; ++r) {
    quarter(0, 4, 8, 12); quarter(1, 5, 9, 13); quarter(2, 6, 10, 14); quarter(3, 7, 11, 15);
    quarter(0, 5, 10, 15); quarter(1, 6, 11, 12); quarter(2, 7, 8, 13); quarter(3, 4, 9, 14);
  }
  for (int w = 0; w < 16; ++w)
    for (int l = 0; l < kLanes; ++l) x[w][l] += init[w][l];
  for (int k = 0; k < 4; ++k) {
    float out[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      float a, b, c, d;
      box_muller(x[4 * k][l], x[4 * k + 1][l], a, b);
      box_muller(x[4 * k + 2][l], x[4 * k + 3][l], c, d);
      out[l] = ((a + b) + (c + d)) * 0.5f;
    }
    for (int l = 0; l < kLanes; ++l) z[4 * l + k] = out[l];
  }
}

void noise_batch(const NoiseStream& s, uint64_t block0, float* z) {
  if (s.source == 1)
    chacha_batch(s, block0, z);
  else
    philox_batch(s, block0, z);
}

template <typename T, typename Acc>
void add_noise_t(T* out, const Acc* base, int64_t n, int64_t first, Acc std, Acc scale,
                 const NoiseStream& s) {
  alignas(64) float z[kBatch];
  for (int64_t j0 = 0; j0 < n; j0 += kBatch) {
    noise_batch(s, uint64_t(first + j0) / 4, z);
    const int64_t m = std::min<int64_t>(kBatch, n - j0);
    T* o = out + j0;
    if (base) {
      const Acc* b = base + j0;
      for (int64_t q = 0; q < m; ++q) o[q] = T((b[q] + std * Acc(z[q])) * scale);
    } else {
      for (int64_t q = 0; q < m; ++q) o[q] = T((Acc(o[q]) + std * Acc(z[q])) * scale);
    }
  }
}

void normals(float* out, int64_t n, int64_t first, const NoiseStream& s) {
  alignas(64) float z[kBatch];
  for (int64_t j0 = 0; j0 < n; j0 += kBatch) {
    noise_batch(s, uint64_t(first + j0) / 4, z);
    const int64_t m = std::min<int64_t>(kBatch, n - j0);
    for (int64_t q = 0; q < m; ++q) out[j0 + q] = z[q];
  }
}

template <typename T, typename Acc>
void sign_step_t(T* out, const T* x, const T* g, const T* xo, int64_t n, Acc a, Acc e,
                 Acc lo, Acc hi) {
  for (int64_t j = 0; j < n; ++j) out[j] = sign_step_elem<T, Acc>(x[j], g[j], xo[j], a, e, lo, hi);
}

template <typename T, typename Acc>
void l2_step_t(T* out, const T* x, const T* g, const T* xo, int64_t n, Acc a, Acc e, Acc lo,
               Acc hi, Acc* d) {
  const Acc den = Acc(std::sqrt(Acc(sum_squares_t<T, Acc>(g, n)))) + Acc(kL2GradEps);
  for (int64_t j = 0; j < n; ++j) d[j] = (Acc(x[j]) + a * (Acc(g[j]) / den)) - Acc(xo[j]);
  const Acc dn = std::sqrt(Acc(sum_squares_t<Acc, Acc>(d, n)));
  const Acc f = l2_projection_factor<Acc>(dn, e);
  for (int64_t j = 0; j < n; ++j) out[j] = T(clamp_nan<Acc>(Acc(xo[j]) + d[j] * f, lo, hi));
}

// Calls fn.template operator()<T, Acc>() for the element type and its op-math type.
template <typename Fn>
auto dispatch(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::F64: return fn.template operator()<double, double>();
    case DType::BF16: return fn.template operator()<c10::BFloat16, float>();
    case DType::F16: return fn.template operator()<c10::Half, float>();
    case DType::F32: break;
  }
  return fn.template operator()<float, float>();
}

double sum_squares(DType dt, const void* x, int64_t n) {
  return dispatch(dt, [&]<typename T, typename Acc>() {
    return sum_squares_t<T, Acc>(static_cast<const T*>(x), n);
  });
}

void axpy(DType dt, const void* x, int64_t n, double c, void* acc) {
  dispatch(dt, [&]<typename T, typename Acc>() {
    axpy_t<T, Acc>(static_cast<const T*>(x), n, Acc(c), static_cast<Acc*>(acc));
  });
}

void sum_into_first(DType dt, void* const* accs, int count, int64_t n) {
  if (dt == DType::F64)
    sum_into_first_t<double>(reinterpret_cast<double* const*>(accs), count, n);
  else
    sum_into_first_t<float>(reinterpret_cast<float* const*>(accs), count, n);
}

void add_noise(DType dt, void* out, const void* base, int64_t n, int64_t first, double std,
               double scale, const NoiseStream& s) {
  dispatch(dt, [&]<typename T, typename Acc>() {
    add_noise_t<T, Acc>(static_cast<T*>(out), static_cast<const Acc*>(base), n, first,
                        Acc(std), Acc(scale), s);
  });
}

void sign_step(DType dt, void* out, const void* x, const void* g, const void* xo, int64_t n,
               double a, double e, double lo, double hi) {
  dispatch(dt, [&]<typename T, typename Acc>() {
    sign_step_t<T, Acc>(static_cast<T*>(out), static_cast<const T*>(x),
                        static_cast<const T*>(g), static_cast<const T*>(xo), n, Acc(a),
                        Acc(e), Acc(lo), Acc(hi));
  });
}

void l2_step(DType dt, void* out, const void* x, const void* g, const void* xo, int64_t n,
             double a, double e, double lo, double hi, void* scratch) {
  dispatch(dt, [&]<typename T, typename Acc>() {
    l2_step_t<T, Acc>(static_cast<T*>(out), static_cast<const T*>(x), static_cast<const T*>(g),
                      static_cast<const T*>(xo), n, Acc(a), Acc(e), Acc(lo), Acc(hi),
                      static_cast<Acc*>(scratch));
  });
}

#define MSF_STR2(x) #x
#define MSF_STR(x) MSF_STR2(x)

}  // namespace

extern const Kernels table;
const Kernels table = {MSF_STR(MSF_ISA), sum_squares, axpy, sum_into_first, add_noise,
                       normals, sign_step, l2_step, conv_grad_scratch, conv_weight_grad};

}  // namespace msf::cpu::MSF_ISA
