// The pointwise kernels compiled for AVX2 + FMA (chosen at run time when the CPU has them).
// The target is set for this file only, before any include, the way ATen builds its own
// per-capability kernels; only header-only vector code is included here.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "cap_feature_macros.h"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define FUSED_RNN_CAP_NS cap_avx2
#include "kernels_impl.h"
#include "attention_impl.h"
#include "variant_kernels_impl.h"
#else
#include "attention_kernels.h"
#include "kernels.h"
#include "variant_kernels.h"
namespace fused_rnn { namespace cpu { namespace cap_avx2 {
const Kernels<float>& kernels_f32() { return cap_default::kernels_f32(); }
const Kernels<double>& kernels_f64() { return cap_default::kernels_f64(); }
const AttnKernels<float>& attn_kernels_f32() { return cap_default::attn_kernels_f32(); }
const AttnKernels<double>& attn_kernels_f64() { return cap_default::attn_kernels_f64(); }
const VariantKernels<float>& variant_kernels_f32() { return cap_default::variant_kernels_f32(); }
const VariantKernels<double>& variant_kernels_f64() { return cap_default::variant_kernels_f64(); }
}}}  // namespace fused_rnn::cpu::cap_avx2
#endif
