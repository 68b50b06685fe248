// The forward step with the bf16 pair GEMM (kernels_impl.h's fwd_pairs), compiled for
// AVX512 with AVX512-BF16 and chosen at run time when the CPU has it (dispatch.cpp's
// bf16_pairs_fwd). Only that entry: the rest of the table is cap_avx512.cpp's.
#if defined(__x86_64__) && defined(__GNUC__)
// False positives of GCC 12 inside its own intrinsics, as in cap_avx512.cpp.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define FUSED_RNN_CAP_AVX512
#include "cap_feature_macros.h"
#define FUSED_RNN_CAP_NS cap_avx512bf16
#define FUSED_RNN_BF16_PAIRS 1
#include <immintrin.h>
#include "kernels_impl.h"
#else
#include <cstdlib>
#include "kernels.h"
namespace fused_rnn { namespace cpu { namespace cap_avx512bf16 {
void fwd_pairs(int64_t, const FwdStep<float>&, int64_t, int64_t) { std::abort(); }  // never chosen
}}}  // namespace fused_rnn::cpu::cap_avx512bf16
#endif
