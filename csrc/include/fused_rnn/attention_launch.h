// Host entry points of the attention kernels of attention_row.cuh, for the torch binding:
// as recurrence_launch.h, no CUDA type is named (launch_types.h's element types, a cudaStream_t
// as void*, a cudaError_t as int). Every pointer is device memory; launches are
// asynchronous on `stream`.
#pragma once

#include "attention_row.cuh"
#include "launch_types.h"

namespace fused_rnn {
namespace cuda {

#define FUSED_RNN_DECLARE_ATTENTION_LAUNCHERS(T)                                       \
  int launch_attention_forward(const AttnArgs<T, acc_t<T>>& a, void* stream);           \
  int launch_attention_backward(const AttnArgs<T, acc_t<T>>& a, void* stream);

FUSED_RNN_DECLARE_ATTENTION_LAUNCHERS(float)
FUSED_RNN_DECLARE_ATTENTION_LAUNCHERS(double)
FUSED_RNN_DECLARE_ATTENTION_LAUNCHERS(half_storage)
FUSED_RNN_DECLARE_ATTENTION_LAUNCHERS(bfloat16_storage)

#undef FUSED_RNN_DECLARE_ATTENTION_LAUNCHERS

}  // namespace cuda
}  // namespace fused_rnn
