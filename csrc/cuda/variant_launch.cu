// The launchers of variant_launch.h: its argument structs re-typed (retype.cuh), then
// variant_row.cuh's launchers. No torch here.
#include "fused_rnn/variant_launch.h"
#include "retype.cuh"

namespace fused_rnn {
namespace cuda {

#define FUSED_RNN_DEFINE_VARIANT_LAUNCHERS(T)                                                 \
  int launch_variant_fwd(int mode, const VariantFwdArgs<T, acc_t<T>>& a, void* stream) {      \
    using D = Device<T>::type;                                                                \
    return int(variant_fwd_step<D, acc_t<T>>(mode, retyped<VariantFwdArgs<D, acc_t<T>>>(a),   \
                                             as_stream(stream)));                             \
  }                                                                                           \
  int launch_variant_bwd(int mode, const VariantBwdArgs<T, acc_t<T>>& a, void* stream) {      \
    using D = Device<T>::type;                                                                \
    return int(variant_bwd_step<D, acc_t<T>>(mode, retyped<VariantBwdArgs<D, acc_t<T>>>(a),   \
                                             as_stream(stream)));                             \
  }

FUSED_RNN_DEFINE_VARIANT_LAUNCHERS(float)
FUSED_RNN_DEFINE_VARIANT_LAUNCHERS(double)
FUSED_RNN_DEFINE_VARIANT_LAUNCHERS(half_storage)
FUSED_RNN_DEFINE_VARIANT_LAUNCHERS(bfloat16_storage)

#undef FUSED_RNN_DEFINE_VARIANT_LAUNCHERS

}  // namespace cuda
}  // namespace fused_rnn
