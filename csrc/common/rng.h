// Counter-based noise shared by the CPU and CUDA kernels.
//
// The specification is modelsec_fast/reference.py (philox_normal,
// chacha20_normal, box_muller); this header computes the same streams with
// branch-free fp32 math (log and sincos polynomials from Cephes) that the CPU
// compiler can vectorise and nvcc can run unchanged. Header only, torch-free.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "spec_constants.h"  // kNoiseDomain

#if defined(__CUDACC__)
#define MSF_HD __host__ __device__ __forceinline__
#else
#define MSF_HD inline __attribute__((always_inline))
#endif

namespace msf {

MSF_HD float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

MSF_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
#endif
}

// One Philox-4x32 round on a counter, with the round key (k0, k1).
MSF_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                         uint32_t k0, uint32_t k1) {
  const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
  const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
  const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
  const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
  const uint32_t n0 = hi1 ^ c1 ^ k0;
  const uint32_t n2 = hi0 ^ c3 ^ k1;
  c0 = n0;
  c1 = lo1;
  c2 = n2;
  c3 = lo0;
}

// Philox-4x32-10 (Salmon et al. 2011): counter (c0..c3) -> four random words.
MSF_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                          uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// Natural log for x in (0, 1] (positive normal floats): Cephes logf, ~1 ulp.
MSF_HD float log_unit(float x) {
  const uint32_t bits = float_to_bits(x);
  float e = float(int32_t((bits >> 23) & 0xFFu) - 126);
  float m = bits_to_float((bits & 0x807FFFFFu) | 0x3F000000u);  // [0.5, 1)
  // Selects between constants only, so compilers if-convert without masking.
  const bool small = m < 0.707106781186547524f;
  e -= small ? 1.0f : 0.0f;
  m = m * (small ? 2.0f : 1.0f) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y += -2.12194440E-4f * e;
  y += -0.5f * z;
  return (m + y) + 0.693359375f * e;
}

// sin and cos of 2*pi*k/2**24 for k in [0, 2**24): the reduction to a quarter
// turn is exact on the integer, then Cephes sinf/cosf polynomials on [-pi/4, pi/4].
MSF_HD void sincos_turns24(uint32_t k, float& s, float& c) {
  const uint32_t q = ((k + (1u << 21)) >> 22) & 3u;
  const int32_t rem = int32_t(k) - int32_t(((k + (1u << 21)) >> 22) << 22);
  const float x = float(rem) * 3.7450702829232254e-07f;  // 2*pi / 2**24
  const float x2 = x * x;
  float ps = -1.9515295891E-4f;
  ps = ps * x2 + 8.3321608736E-3f;
  ps = ps * x2 - 1.6666654611E-1f;
  const float sx = x + x * x2 * ps;
  float pc = 2.443315711809948E-5f;
  pc = pc * x2 - 1.388731625493765E-3f;
  pc = pc * x2 + 4.166664568298827E-2f;
  const float cx = 1.0f - 0.5f * x2 + x2 * x2 * pc;
  // Rotate by q quarter turns with integer bit selects (branch-free on any ISA).
  const uint32_t swap = 0u - (q & 1u);
  const uint32_t sb = float_to_bits(sx), cb = float_to_bits(cx);
  const uint32_t s1 = (cb & swap) | (sb & ~swap);
  const uint32_t c1 = (sb & swap) | (cb & ~swap);
  s = bits_to_float(s1 ^ ((q & 2u) << 30));          // negative for q = 2, 3
  c = bits_to_float(c1 ^ (((q + 1u) & 2u) << 30));   // negative for q = 1, 2
}

// Box-Muller on two words: u = (wu * 2**8 + (wf & 0xFF) + 0.5) * 2**-40 (40 bits,
// so |z| <= 7.54), f = (wf >> 8) / 2**24.
MSF_HD void box_muller(uint32_t wu, uint32_t wf, float& z0, float& z1) {
  // fp32(wu) rounded once, from two exact halves (no unsigned convert on AVX2).
  const float wu_f = float(int32_t(wu >> 16)) * 65536.0f + float(int32_t(wu & 0xFFFFu));
  // The low byte of wf (unused by the angle) extends wu: ((wf & 0xFF) + 0.5) / 2**8, exact.
  const float below = float(int32_t(wf & 0xFFu)) * 0.00390625f + 0.001953125f;
  // One rounding, so u is correctly rounded for wu < 2**24 (u < 2**-8), where the tail lives.
  const float u = (wu_f + below) * 2.3283064365386963e-10f;
  const float r = sqrtf(-2.0f * log_unit(u));
  float s, c;
  sincos_turns24(wf >> 8, s, c);
  z0 = r * c;
  z1 = r * s;
}

// Four fp32 normals of Philox block `block` of tensor `tensor_index`.
MSF_HD void philox_normal4(uint64_t seed, uint64_t block, uint32_t tensor_index,
                           float z[4]) {
  uint32_t c0 = uint32_t(block), c1 = uint32_t(block >> 32), c2 = tensor_index,
           c3 = kNoiseDomain;
  philox4x32_10(c0, c1, c2, c3, uint32_t(seed), uint32_t(seed >> 32));
  box_muller(c0, c1, z[0], z[1]);
  box_muller(c2, c3, z[2], z[3]);
}

MSF_HD uint32_t rotl32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

MSF_HD void chacha_quarter(uint32_t* x, int a, int b, int c, int d) {
  x[a] += x[b]; x[d] = rotl32(x[d] ^ x[a], 16);
  x[c] += x[d]; x[b] = rotl32(x[b] ^ x[c], 12);
  x[a] += x[b]; x[d] = rotl32(x[d] ^ x[a], 8);
  x[c] += x[d]; x[b] = rotl32(x[b] ^ x[c], 7);
}

// ChaCha20 block function (RFC 8439 2.3) with state words 12..15 = w12..w15.
MSF_HD void chacha20_block(const uint32_t key[8], uint32_t w12, uint32_t w13,
                           uint32_t w14, uint32_t w15, uint32_t out[16]) {
  uint32_t init[16] = {0x61707865u, 0x3320646Eu, 0x79622D32u, 0x6B206574u,
                       key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
                       w12, w13, w14, w15};
  for (int i = 0; i < 16; ++i) out[i] = init[i];
  for (int r = 0; r < 10; ++r) {
    chacha_quarter(out, 0, 4, 8, 12);
    chacha_quarter(out, 1, 5, 9, 13);
    chacha_quarter(out, 2, 6, 10, 14);
    chacha_quarter(out, 3, 7, 11, 15);
    chacha_quarter(out, 0, 5, 10, 15);
    chacha_quarter(out, 1, 6, 11, 12);
    chacha_quarter(out, 2, 7, 8, 13);
    chacha_quarter(out, 3, 4, 9, 14);
  }
  for (int i = 0; i < 16; ++i) out[i] += init[i];
}

// Four secure fp32 normals of ChaCha20 block `block` of tensor `tensor_index`;
// each is (sum of four Box-Muller normals) / 2, Opacus's floating-point-attack
// mitigation.
MSF_HD void chacha_normal4(const uint32_t key[8], uint64_t block, uint32_t tensor_index,
                           float z[4]) {
  uint32_t w[16];
  chacha20_block(key, uint32_t(block), uint32_t(block >> 32), tensor_index, kNoiseDomain, w);
  for (int k = 0; k < 4; ++k) {
    float a, b, c, d;
    box_muller(w[4 * k], w[4 * k + 1], a, b);
    box_muller(w[4 * k + 2], w[4 * k + 3], c, d);
    z[k] = ((a + b) + (c + d)) * 0.5f;
  }
}

}  // namespace msf
