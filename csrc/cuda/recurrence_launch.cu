// The launchers of recurrence_launch.h: its host-visible argument structs, re-typed to the
// CUDA storage types (same layout: pointers, sizes, a flag), then recurrence_step.cuh's
// launchers. No torch here.
#include <cstring>

#include "fused_rnn/recurrence_launch.h"

namespace fused_rnn {
namespace cuda {
namespace {

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

// Args<Host> -> Args<Device>: the same struct with the element type renamed.
template <typename To, typename From>
To retyped(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "argument structs must share their layout");
  To to;
  std::memcpy(static_cast<void*>(&to), static_cast<const void*>(&from), sizeof(To));
  return to;
}

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace

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
