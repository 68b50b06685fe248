// Host entry points of the step kernels of recurrence_step.cuh, for the torch binding.
//
// nvcc compiles them (csrc/cuda/recurrence_launch.cu); the binding, which a plain C++
// compiler builds against torch, calls them. So this header names no CUDA type: half
// storage is launch_types.h's, a stream is a cudaStream_t passed as void*, and the result is a
// cudaError_t as int (0: launched).
// Every pointer in the argument structs is device memory (recurrence_step.cuh says what
// each holds); the launch is asynchronous on `stream`.
#pragma once

#include "recurrence_step.cuh"
#include "launch_types.h"

namespace fused_rnn {
namespace cuda {

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

}  // namespace cuda
}  // namespace fused_rnn
