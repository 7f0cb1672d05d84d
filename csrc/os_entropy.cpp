#include "os_entropy.h"

#include <torch/headeronly/util/Exception.h>  // STD_TORCH_CHECK

#include <cerrno>
#include <cstdio>

#if defined(__linux__)
#include <sys/random.h>
#endif

namespace msf {

void os_random_key(uint32_t key[8]) {
  unsigned char* out = reinterpret_cast<unsigned char*>(key);
  size_t have = 0;
#if defined(__linux__)
  while (have < 32) {
    const ssize_t got = getrandom(out + have, 32 - have, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      break;  // ENOSYS on old kernels: try /dev/urandom below
    }
    have += size_t(got);
  }
#endif
  if (have < 32) {
    std::FILE* f = std::fopen("/dev/urandom", "rb");
    STD_TORCH_CHECK(f != nullptr, "modelsec_fast: no OS entropy source for source='secure'");
    have = std::fread(out, 1, 32, f);
    std::fclose(f);
    STD_TORCH_CHECK(have == 32, "modelsec_fast: short read from /dev/urandom for source='secure'");
  }
}

}  // namespace msf
