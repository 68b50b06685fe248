// The launchers of sequence_launch.h: its argument structs re-typed (retype.cuh), then
// recurrence_sequence.cuh's and recurrence_grid.cuh's launchers. No torch here.
#include "fused_rnn/sequence_launch.h"
#include "retype.cuh"

namespace fused_rnn {
namespace cuda {

#define FUSED_RNN_DEFINE_SEQUENCE_LAUNCHERS(T)                                                  \
  int launch_sequence_fwd(int mode, const SeqFwdArgs<T, acc_t<T>>& a, void* stream) {           \
    using D = Device<T>::type;                                                                  \
    return int(recurrence_sequence_fwd<D, acc_t<T>>(                                            \
        mode, retyped<SeqFwdArgs<D, acc_t<T>>>(a), as_stream(stream)));                         \
  }                                                                                             \
  int launch_sequence_bwd(int mode, const SeqBwdArgs<T, acc_t<T>>& a, void* stream) {           \
    using D = Device<T>::type;                                                                  \
    return int(recurrence_sequence_bwd<D, acc_t<T>>(                                            \
        mode, retyped<SeqBwdArgs<D, acc_t<T>>>(a), as_stream(stream)));                         \
  }                                                                                             \
  int launch_grid_fwd(int mode, const SeqFwdArgs<T, acc_t<T>>& a, int64_t units, void* stream) { \
    using D = Device<T>::type;                                                                  \
    return int(recurrence_grid_fwd<D, acc_t<T>>(                                                \
        mode, retyped<SeqFwdArgs<D, acc_t<T>>>(a), units, as_stream(stream)));                  \
  }                                                                                             \
  int launch_grid_bwd(int mode, const SeqBwdArgs<T, acc_t<T>>& a, int64_t units, void* stream) { \
    using D = Device<T>::type;                                                                  \
    return int(recurrence_grid_bwd<D, acc_t<T>>(                                                \
        mode, retyped<SeqBwdArgs<D, acc_t<T>>>(a), units, as_stream(stream)));                  \
  }

FUSED_RNN_DEFINE_SEQUENCE_LAUNCHERS(float)
FUSED_RNN_DEFINE_SEQUENCE_LAUNCHERS(double)
FUSED_RNN_DEFINE_SEQUENCE_LAUNCHERS(half_storage)
FUSED_RNN_DEFINE_SEQUENCE_LAUNCHERS(bfloat16_storage)

#undef FUSED_RNN_DEFINE_SEQUENCE_LAUNCHERS

int sequence_device_limits(int device, int64_t* smem_optin_bytes, int64_t* multiprocessors) {
  int smem = 0, sms = 0;
  cudaError_t err = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  *smem_optin_bytes = smem;
  *multiprocessors = sms;
  return int(err);
}

}  // namespace cuda
}  // namespace fused_rnn
