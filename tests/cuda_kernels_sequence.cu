// The whole-sequence kernels' translation unit for tests/test_cuda_kernels_compile.py (nvcc,
// sm_80 and sm_90): recurrence_sequence.cuh's and recurrence_grid.cuh's launchers for every
// mode and storage type,
// through the extension's own launcher file (float, double, __half, __nv_bfloat16).
#include "fused_rnn/block.cuh"
#include "fused_rnn/recurrence_grid.cuh"
#include "fused_rnn/recurrence_sequence.cuh"

#include "../csrc/cuda/sequence_launch.cu"
