// The forward step with the bf16 pair GEMM (kernels_impl.h's fwd_pairs), compiled for
// AVX512 with AVX512-BF16 and chosen at run time when the CPU has it (dispatch.cpp's
// bf16_pairs_fwd). Only that entry: the rest of the table is cap_avx512.cpp's.
#if defined(__x86_64__) && defined(__GNUC__)
// See cap_avx512.cpp.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define FUSED_RNN_VEC_REGS 32
#define CPU_CAPABILITY_AVX512
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
