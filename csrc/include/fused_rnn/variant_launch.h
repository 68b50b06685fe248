// Host entry points of the variant step kernels of variant_row.cuh, for the torch binding:
// like recurrence_launch.h, no CUDA type (half storage is launch_types.h's, the stream a
// void*, the result a cudaError_t as int). Every pointer is device memory; the launch is
// asynchronous on `stream`.
#pragma once

#include "launch_types.h"
#include "variant_row.cuh"

namespace fused_rnn {
namespace cuda {

#define FUSED_RNN_DECLARE_VARIANT_LAUNCHERS(T)                                                \
  int launch_variant_fwd(int mode, const VariantFwdArgs<T, acc_t<T>>& a, void* stream);       \
  int launch_variant_bwd(int mode, const VariantBwdArgs<T, acc_t<T>>& a, void* stream);

FUSED_RNN_DECLARE_VARIANT_LAUNCHERS(float)
FUSED_RNN_DECLARE_VARIANT_LAUNCHERS(double)
FUSED_RNN_DECLARE_VARIANT_LAUNCHERS(half_storage)
FUSED_RNN_DECLARE_VARIANT_LAUNCHERS(bfloat16_storage)

#undef FUSED_RNN_DECLARE_VARIANT_LAUNCHERS

}  // namespace cuda
}  // namespace fused_rnn
