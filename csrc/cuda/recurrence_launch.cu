// The launchers of recurrence_launch.h: its argument structs re-typed (retype.cuh), then
// recurrence_step.cuh's launchers. No torch here.
#include "fused_rnn/recurrence_launch.h"
#include "retype.cuh"

namespace fused_rnn {
namespace cuda {

#define FUSED_RNN_DEFINE_LAUNCHERS(T)                                                         \
  int launch_fwd_step(int mode, const FwdStepArgs<T, acc_t<T>>& a, void* stream) {            \
    using D = Device<T>::type;                                                                \
    return int(recurrence_fwd_step<D, acc_t<T>>(                                              \
        mode, retyped<FwdStepArgs<D, acc_t<T>>>(a), as_stream(stream)));                      \
  }                                                                                           \
  int launch_bwd_step(int mode, const BwdStepArgs<T, acc_t<T>>& a, void* stream) {            \
    using D = Device<T>::type;                                                                \
    return int(recurrence_bwd_step<D, acc_t<T>>(                                              \
        mode, retyped<BwdStepArgs<D, acc_t<T>>>(a), as_stream(stream)));                      \
  }                                                                                           \
  int launch_projection_fwd_post(const ProjFwdPostArgs<T>& a, void* stream) {                 \
    using D = Device<T>::type;                                                                \
    return int(projection_fwd_post<D>(retyped<ProjFwdPostArgs<D>>(a), as_stream(stream)));    \
  }                                                                                           \
  int launch_projection_bwd_pre(const ProjBwdPreArgs<T, acc_t<T>>& a, void* stream) {         \
    using D = Device<T>::type;                                                                \
    return int(projection_bwd_pre<D, acc_t<T>>(retyped<ProjBwdPreArgs<D, acc_t<T>>>(a),       \
                                               as_stream(stream)));                           \
  }

FUSED_RNN_DEFINE_LAUNCHERS(float)
FUSED_RNN_DEFINE_LAUNCHERS(double)
FUSED_RNN_DEFINE_LAUNCHERS(half_storage)
FUSED_RNN_DEFINE_LAUNCHERS(bfloat16_storage)

#undef FUSED_RNN_DEFINE_LAUNCHERS

const char* launch_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

}  // namespace cuda
}  // namespace fused_rnn
