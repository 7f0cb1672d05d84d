// 256-bit keys for the secure noise source, from the operating system's CSPRNG.
#pragma once

#include <cstdint>

namespace msf {

// Fills key[0..8) from getrandom(2) (or /dev/urandom); throws when neither works,
// never falls back to a weaker source.
void os_random_key(uint32_t key[8]);

}  // namespace msf
