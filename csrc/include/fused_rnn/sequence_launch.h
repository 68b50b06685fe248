// Host entry points of the whole-sequence kernels of recurrence_sequence.cuh (one block per
// batch tile) and recurrence_grid.cuh (the units over several blocks, `units` a block), for the torch
// binding: as recurrence_launch.h, no CUDA type here (half storage is launch_types.h's, a
// stream a cudaStream_t as void*, a result a cudaError_t as int, 0: launched).
#pragma once

#include <stdint.h>

#include "launch_types.h"
#include "recurrence_grid.cuh"
#include "recurrence_sequence.cuh"

namespace fused_rnn {
namespace cuda {

#define FUSED_RNN_DECLARE_SEQUENCE_LAUNCHERS(T)                                        \
  int launch_sequence_fwd(int mode, const SeqFwdArgs<T, acc_t<T>>& a, void* stream);   \
  int launch_sequence_bwd(int mode, const SeqBwdArgs<T, acc_t<T>>& a, void* stream);  \
  int launch_grid_fwd(int mode, const SeqFwdArgs<T, acc_t<T>>& a, int64_t units, void* stream); \
  int launch_grid_bwd(int mode, const SeqBwdArgs<T, acc_t<T>>& a, int64_t units, void* stream);

FUSED_RNN_DECLARE_SEQUENCE_LAUNCHERS(float)
FUSED_RNN_DECLARE_SEQUENCE_LAUNCHERS(double)
FUSED_RNN_DECLARE_SEQUENCE_LAUNCHERS(half_storage)
FUSED_RNN_DECLARE_SEQUENCE_LAUNCHERS(bfloat16_storage)

#undef FUSED_RNN_DECLARE_SEQUENCE_LAUNCHERS

// Of CUDA device `device`: the dynamic shared memory a block may opt in to, in bytes, and the
// number of multiprocessors (how many tiles run at once). Returns a cudaError_t as int.
int sequence_device_limits(int device, int64_t* smem_optin_bytes, int64_t* multiprocessors);

}  // namespace cuda
}  // namespace fused_rnn
