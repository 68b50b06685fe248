// The host-visible argument structs of the launch headers (element types of launch_types.h)
// re-typed to the CUDA storage types: the same struct with the element type renamed (same
// layout: pointers, sizes, flags). For csrc/cuda/*.cu only (nvcc).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstring>

#include "fused_rnn/launch_types.h"

namespace fused_rnn {
namespace cuda {

template <typename T>
struct Device {
  using type = T;
};
template <>
struct Device<half_storage> {
  using type = __half;
};
template <>
struct Device<bfloat16_storage> {
  using type = __nv_bfloat16;
};

template <typename To, typename From>
To retyped(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "argument structs must share their layout");
  To to;
  std::memcpy(static_cast<void*>(&to), static_cast<const void*>(&from), sizeof(To));
  return to;
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace cuda
}  // namespace fused_rnn
