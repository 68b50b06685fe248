// The launchers of attention_launch.h: its argument struct re-typed (retype.cuh), then
// attention_row.cuh's launchers. No torch here.
#include "fused_rnn/attention_launch.h"
#include "retype.cuh"

namespace fused_rnn {
namespace cuda {

#define FUSED_RNN_DEFINE_ATTENTION_LAUNCHERS(T)                                             \
  int launch_attention_forward(const AttnArgs<T, acc_t<T>>& a, void* stream) {              \
    using D = Device<T>::type;                                                              \
    return int(attention_forward<D, acc_t<T>>(retyped<AttnArgs<D, acc_t<T>>>(a),            \
                                              as_stream(stream)));                          \
  }                                                                                         \
  int launch_attention_backward(const AttnArgs<T, acc_t<T>>& a, void* stream) {             \
    using D = Device<T>::type;                                                              \
    return int(attention_backward<D, acc_t<T>>(retyped<AttnArgs<D, acc_t<T>>>(a),           \
                                               as_stream(stream)));                         \
  }

FUSED_RNN_DEFINE_ATTENTION_LAUNCHERS(float)
FUSED_RNN_DEFINE_ATTENTION_LAUNCHERS(double)
FUSED_RNN_DEFINE_ATTENTION_LAUNCHERS(half_storage)
FUSED_RNN_DEFINE_ATTENTION_LAUNCHERS(bfloat16_storage)

#undef FUSED_RNN_DEFINE_ATTENTION_LAUNCHERS

}  // namespace cuda
}  // namespace fused_rnn
