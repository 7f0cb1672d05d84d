// Per-sample convolution weight gradients and their squared norms (kernels.h),
// compiled once per instruction set like kernels_isa.cpp.
//
// W = G A^T is a GEMM over the output positions T. A (the input's patches) is
// never formed whole: each block of kc positions is gathered row by row (a row
// is one patch entry over the block's positions: contiguous copies of the input
// for stride 1), G is packed into panels of kP channels, and a kD x kP tile of
// W stays in registers while it sums over the block. So the DP engine gets a
// sample's norm without writing its weight gradient (or writes it only when it
// keeps it), and one sample's working set stays in cache.
#include <algorithm>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "kernels.h"

#ifndef MSF_ISA
#error "compile with -DMSF_ISA=<namespace>"
#endif

namespace msf::cpu::MSF_ISA {
namespace {

constexpr int64_t kD = 6;    // patch entries (columns of W) per register tile
constexpr int64_t kP = 16;   // output channels (rows of W) per register tile
// One block's patch rows and G panels (kc x (padded d + padded c_out) floats) stay
// within this many bytes, so they are read from L2 by the tiles.
constexpr int64_t kBlockBytes = 256 << 10;
constexpr int64_t kMinBlock = 16, kMaxBlock = 1024;

struct Blocking {
  int64_t d, d_pad, p_pad, steps, kc;
};

Blocking blocking(const ConvGeometry& geo) {
  Blocking b;
  b.d = geo.c_in * geo.kh * geo.kw;
  b.d_pad = (b.d + kD - 1) / kD * kD;
  b.p_pad = (geo.c_out + kP - 1) / kP * kP;
  b.steps = geo.oh * geo.ow;
  b.kc = std::clamp<int64_t>(
      kBlockBytes / (int64_t(sizeof(float)) * std::max<int64_t>(b.d_pad + b.p_pad, 1)), kMinBlock,
      kMaxBlock);
  b.kc = std::min(b.kc, std::max<int64_t>(b.steps, 1));
  return b;
}

// ap[j * kt + q] = A[j][t0 + q]: patch entry j = (channel, kernel row, kernel
// column) at output position t0 + q; 0 in the padding and for j >= d. Copied one
// output row's run at a time.
void pack_patches(const float* x, const ConvGeometry& geo, const Blocking& b, int64_t t0,
                  int64_t kt, float* ap) {
  const int64_t taps = geo.kh * geo.kw;
  for (int64_t j = 0; j < b.d_pad; ++j) {
    float* row = ap + j * kt;
    if (j >= b.d) {
      std::fill(row, row + kt, 0.0f);
      continue;
    }
    const float* xc = x + (j / taps) * geo.h * geo.w;
    const int64_t ih_off = (j % taps) / geo.kw * geo.dh - geo.ph;
    const int64_t iw_off = j % geo.kw * geo.dw - geo.pw;
    // output columns whose input column lies inside the image: [ow_lo, ow_hi)
    const int64_t ow_lo = iw_off >= 0 ? 0 : (-iw_off + geo.sw - 1) / geo.sw;
    const int64_t ow_hi = geo.w - 1 - iw_off < 0 ? 0 : (geo.w - 1 - iw_off) / geo.sw + 1;
    for (int64_t t = t0; t < t0 + kt;) {
      const int64_t oh = t / geo.ow, ow0 = t % geo.ow;
      const int64_t ow1 = std::min(geo.ow, ow0 + (t0 + kt - t));
      float* run = row + (t - t0);  // run[ow - ow0] for ow in [ow0, ow1)
      const int64_t ih = oh * geo.sh + ih_off;
      const int64_t lo = std::clamp(ow_lo, ow0, ow1), hi = std::clamp(ow_hi, lo, ow1);
      if (ih < 0 || ih >= geo.h) {
        std::fill(run, run + (ow1 - ow0), 0.0f);
      } else {
        std::fill(run, run + (lo - ow0), 0.0f);
        const float* src = xc + ih * geo.w + iw_off;  // src[ow * sw] for ow in [lo, hi)
        if (geo.sw == 1)
          std::copy(src + lo, src + hi, run + (lo - ow0));
        else
          for (int64_t ow = lo; ow < hi; ++ow) run[ow - ow0] = src[ow * geo.sw];
        std::fill(run + (hi - ow0), run + (ow1 - ow0), 0.0f);
      }
      t += ow1 - ow0;
    }
  }
}

// gp[(o / kP) * kt * kP + q * kP + o % kP] = G[o][t0 + q]; 0 for o >= c_out.
void pack_grads(const float* g, const ConvGeometry& geo, const Blocking& b, int64_t t0,
                int64_t kt, float* gp) {
  for (int64_t o = 0; o < b.p_pad; ++o) {
    float* dst = gp + (o / kP) * kt * kP + o % kP;
    if (o >= geo.c_out) {
      for (int64_t q = 0; q < kt; ++q) dst[q * kP] = 0.0f;
      continue;
    }
    const float* src = g + o * b.steps + t0;
    for (int64_t q = 0; q < kt; ++q) dst[q * kP] = src[q];
  }
}

// w[r * kP + l] += sum_q a[r * kt + q] * bp[q * kP + l], q in order: one tile of W^T.
void tile(const float* a, const float* bp, int64_t kt, float* w) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 c[kD][2];
  for (int r = 0; r < kD; ++r) {
    c[r][0] = _mm256_loadu_ps(w + r * kP);
    c[r][1] = _mm256_loadu_ps(w + r * kP + 8);
  }
  for (int64_t q = 0; q < kt; ++q) {
    const __m256 b0 = _mm256_loadu_ps(bp + q * kP), b1 = _mm256_loadu_ps(bp + q * kP + 8);
    for (int r = 0; r < kD; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * kt + q);
      c[r][0] = _mm256_fmadd_ps(av, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(av, b1, c[r][1]);
    }
  }
  for (int r = 0; r < kD; ++r) {
    _mm256_storeu_ps(w + r * kP, c[r][0]);
    _mm256_storeu_ps(w + r * kP + 8, c[r][1]);
  }
#else
  float c[kD][kP];
  for (int r = 0; r < kD; ++r)
    for (int l = 0; l < kP; ++l) c[r][l] = w[r * kP + l];
  for (int64_t q = 0; q < kt; ++q)
    for (int r = 0; r < kD; ++r)
      for (int l = 0; l < kP; ++l) c[r][l] += a[r * kt + q] * bp[q * kP + l];
  for (int r = 0; r < kD; ++r)
    for (int l = 0; l < kP; ++l) w[r * kP + l] = c[r][l];
#endif
}

}  // namespace

int64_t conv_grad_scratch(const ConvGeometry& geo) {
  const Blocking b = blocking(geo);
  return b.kc * (b.d_pad + b.p_pad) + b.d_pad * b.p_pad;
}

double conv_weight_grad(const float* x, const float* g, const ConvGeometry& geo, float* out,
                        float* scratch) {
  const Blocking b = blocking(geo);
  const int64_t d_tiles = b.d_pad / kD, p_tiles = b.p_pad / kP;
  float* ap = scratch;
  float* gp = ap + b.kc * b.d_pad;
  float* wt = gp + b.kc * b.p_pad;  // tile (dt, pt) at (dt * p_tiles + pt) * kD * kP
  std::fill(wt, wt + b.d_pad * b.p_pad, 0.0f);
  for (int64_t t0 = 0; t0 < b.steps; t0 += b.kc) {
    const int64_t kt = std::min(b.kc, b.steps - t0);
    pack_patches(x, geo, b, t0, kt, ap);
    pack_grads(g, geo, b, t0, kt, gp);
    // kD patch rows stay in L1 while the channel panels stream past them.
    for (int64_t dt = 0; dt < d_tiles; ++dt)
      for (int64_t pt = 0; pt < p_tiles; ++pt)
        tile(ap + dt * kD * kt, gp + pt * kt * kP, kt, wt + (dt * p_tiles + pt) * kD * kP);
  }
  // The padded rows and columns are exact zeros: summing whole tiles is exact.
  double sq = 0.0;
  for (int64_t k = 0; k < d_tiles * p_tiles; ++k) {
    float lanes[kP] = {};
    for (int r = 0; r < kD; ++r)
      for (int l = 0; l < kP; ++l) {
        const float v = wt[k * kD * kP + r * kP + l];
        lanes[l] += v * v;
      }
    for (int l = 0; l < kP; ++l) sq += double(lanes[l]);
  }
  if (out != nullptr)  // tile (dt, pt) holds W[pt * kP + l][dt * kD + r] at r * kP + l
    for (int64_t dt = 0; dt < d_tiles; ++dt)
      for (int64_t pt = 0; pt < p_tiles; ++pt) {
        const float* t = wt + (dt * p_tiles + pt) * kD * kP;
        const int64_t rows = std::min(kD, b.d - dt * kD), cols = std::min(kP, geo.c_out - pt * kP);
        for (int64_t l = 0; l < cols; ++l)
          for (int64_t r = 0; r < rows; ++r)
            out[(pt * kP + l) * b.d + dt * kD + r] = t[r * kP + l];
      }
  return sq;
}

}  // namespace msf::cpu::MSF_ISA
