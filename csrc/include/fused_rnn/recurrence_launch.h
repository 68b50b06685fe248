// Host entry points of the step kernels of recurrence_step.cuh, for the torch binding.
//
// nvcc compiles them (csrc/cuda/recurrence_launch.cu); the binding, which a plain C++
// compiler builds against torch, calls them. So this header names no CUDA type: half
// storage is an opaque 2-byte struct laid out as __half / __nv_bfloat16, a stream is a
// cudaStream_t passed as void*, and the result is a cudaError_t as int (0: launched).
// Every pointer in the argument structs is device memory (recurrence_step.cuh says what
// each holds); the launch is asynchronous on `stream`.
#pragma once

#include "recurrence_step.cuh"

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

#define FUSED_RNN_DECLARE_LAUNCHERS(T)                                                      \
  int launch_fwd_step(int mode, const FwdStepArgs<T, acc_t<T>>& a, void* stream);           \
  int launch_bwd_step(int mode, const BwdStepArgs<T, acc_t<T>>& a, void* stream);           \
  int launch_projection_fwd_post(const ProjFwdPostArgs<T>& a, void* stream);                \
  int launch_projection_bwd_pre(const ProjBwdPreArgs<T, acc_t<T>>& a, void* stream);

FUSED_RNN_DECLARE_LAUNCHERS(float)
FUSED_RNN_DECLARE_LAUNCHERS(double)
FUSED_RNN_DECLARE_LAUNCHERS(half_storage)
FUSED_RNN_DECLARE_LAUNCHERS(bfloat16_storage)

#undef FUSED_RNN_DECLARE_LAUNCHERS

// cudaGetErrorString of a launcher's result.
const char* launch_error_string(int error);

}  // namespace cuda
}  // namespace fused_rnn
