// Third-party headers seen as system headers: their own warnings under -Wall, -std=c++17
// and GCC 12 (`#pragma unroll`, C++20 bit-field initialisers, -Wpsabi notes) are not ours,
// and GCC 12 cannot silence -Wunknown-pragmas with a diagnostic pragma.
#pragma once
#pragma GCC system_header

#include <ATen/cpu/vec/vec.h>
