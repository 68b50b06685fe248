// A translation unit tests/test_cuda_kernels_compile.py compiles with nvcc for sm_80 and
// sm_90: every header of csrc/include/fused_rnn, one explicit instantiation of each
// launcher per production dtype (float, __half, __nv_bfloat16; fp32 accumulation), and the
// extension's own launcher file (csrc/cuda/*.cu, which adds float64).
#include "fused_rnn/attention_row.cuh"
#include "fused_rnn/block.cuh"
#include "fused_rnn/cell_math.cuh"
#include "fused_rnn/recurrence_step.cuh"
#include "fused_rnn/variant_row.cuh"

#include "../csrc/cuda/attention_launch.cu"
#include "../csrc/cuda/recurrence_launch.cu"
#include "../csrc/cuda/variant_launch.cu"

namespace fused_rnn {
namespace cuda {

#define FUSED_RNN_INSTANTIATE(T)                                                                \
  template cudaError_t recurrence_fwd_step<T, float>(int, const FwdStepArgs<T, float>&,         \
                                                     cudaStream_t);                             \
  template cudaError_t recurrence_bwd_step<T, float>(int, const BwdStepArgs<T, float>&,         \
                                                     cudaStream_t);                             \
  template cudaError_t projection_fwd_post<T>(const ProjFwdPostArgs<T>&, cudaStream_t);         \
  template cudaError_t projection_bwd_pre<T, float>(const ProjBwdPreArgs<T, float>&, cudaStream_t); \
  template cudaError_t variant_fwd_step<T, float>(int, const VariantFwdArgs<T, float>&,         \
                                                  cudaStream_t);                                \
  template cudaError_t variant_bwd_step<T, float>(int, const VariantBwdArgs<T, float>&,         \
                                                  cudaStream_t);

FUSED_RNN_INSTANTIATE(float)
FUSED_RNN_INSTANTIATE(__half)
FUSED_RNN_INSTANTIATE(__nv_bfloat16)

#undef FUSED_RNN_INSTANTIATE

}  // namespace cuda
}  // namespace fused_rnn
