// Picks the CPU kernel table for this machine once (see kernels.h).
// MODELSEC_FAST_CPU_ISA=base|avx2|avx512 forces a table, for tests and benchmarks.
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace msf::cpu {
namespace {

const Kernels* pick() {
#if defined(MSF_HAVE_X86_VARIANTS)
  const char* forced = std::getenv("MODELSEC_FAST_CPU_ISA");
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (forced && std::strcmp(forced, "base") == 0) return &base::table;
  if (forced && std::strcmp(forced, "avx2") == 0 && has2) return &avx2::table;
  if (has512 && !(forced && std::strcmp(forced, "avx2") == 0)) return &avx512::table;
  if (has2) return &avx2::table;
#endif
  return &base::table;
}

}  // namespace

const Kernels& kernels() {
  static const Kernels* chosen = pick();
  return *chosen;
}

}  // namespace msf::cpu
