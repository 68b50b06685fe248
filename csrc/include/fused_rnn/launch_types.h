// What the launch headers share with the torch binding (a plain C++ compiler): the element
// types as it names them (half storage as opaque 2-byte structs laid out as __half /
// __nv_bfloat16; csrc/cuda/retype.cuh maps them back), the accumulation type of each, and
// the text of a launcher's error.
#pragma once

namespace fused_rnn {
namespace cuda {

struct alignas(2) half_storage {
  unsigned short bits;
};
struct alignas(2) bfloat16_storage {
  unsigned short bits;
};

// The accumulation type of a storage type: double for double, else float.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

// cudaGetErrorString of a launcher's result (a cudaError_t as int).
const char* launch_error_string(int error);

}  // namespace cuda
}  // namespace fused_rnn
