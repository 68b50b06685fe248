// The pointwise kernels compiled for AVX512 (F, BW, VL, DQ), chosen at run time when the
// CPU has them. See cap_avx2.cpp.
#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 flags _mm512_undefined_ps inside its own intrinsics as (maybe-)uninitialized (false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define FUSED_RNN_CAP_AVX512
#include "cap_feature_macros.h"
#define FUSED_RNN_CAP_NS cap_avx512
#include "kernels_impl.h"
#include "attention_impl.h"
#include "variant_kernels_impl.h"
#else
#include "attention_kernels.h"
#include "kernels.h"
#include "variant_kernels.h"
namespace fused_rnn { namespace cpu { namespace cap_avx512 {
const Kernels<float>& kernels_f32() { return cap_default::kernels_f32(); }
const Kernels<double>& kernels_f64() { return cap_default::kernels_f64(); }
const AttnKernels<float>& attn_kernels_f32() { return cap_default::attn_kernels_f32(); }
const AttnKernels<double>& attn_kernels_f64() { return cap_default::attn_kernels_f64(); }
const VariantKernels<float>& variant_kernels_f32() { return cap_default::variant_kernels_f32(); }
const VariantKernels<double>& variant_kernels_f64() { return cap_default::variant_kernels_f64(); }
}}}  // namespace fused_rnn::cpu::cap_avx512
#endif
