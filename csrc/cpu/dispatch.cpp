// The kernel tables this CPU runs: one per vector ISA (cap_*.cpp), the best one the CPU
// supports unless FUSED_RNN_CPU_CAPABILITY (else ATen's ATEN_CPU_CAPABILITY) lowers it.
#include <cstdlib>
#include <string>

#include "attention_kernels.h"
#include "kernels.h"
#include "variant_kernels.h"

namespace fused_rnn {
namespace cpu {

namespace {

// ---------------------------------------------------------------- capability dispatch

enum class Cap { kDefault, kAvx2, kAvx512 };

Cap detect_cap() {
  Cap best = Cap::kDefault;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Cap::kAvx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    best = Cap::kAvx512;
  }
#endif
  // FUSED_RNN_CPU_CAPABILITY (else ATen's ATEN_CPU_CAPABILITY) can only lower the choice.
  const char* env = std::getenv("FUSED_RNN_CPU_CAPABILITY");
  if (!env || !*env) env = std::getenv("ATEN_CPU_CAPABILITY");
  if (env && *env) {
    const std::string want(env);
    Cap cap = best;
    if (want == "default") cap = Cap::kDefault;
    if (want == "avx2") cap = Cap::kAvx2;
    if (want == "avx512") cap = Cap::kAvx512;
    if (static_cast<int>(cap) < static_cast<int>(best)) best = cap;
  }
  return best;
}

Cap cap() {
  static const Cap c = detect_cap();
  return c;
}

}  // namespace

FwdPairsFn bf16_pairs_fwd() {
  static const FwdPairsFn f = [] {
    const char* env = std::getenv("FUSED_RNN_CPU_BF16");
    if (cap() != Cap::kAvx512 || (env && env[0] == '0')) return FwdPairsFn(nullptr);
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512bf16")) return &cap_avx512bf16::fwd_pairs;
#endif
    return FwdPairsFn(nullptr);
  }();
  return f;
}

const char* kernel_capability() {
  switch (cap()) {
    case Cap::kAvx512: return "avx512";
    case Cap::kAvx2: return "avx2";
    default: return "default";
  }
}

template <>
const Kernels<float>& kernels<float>() {
  switch (cap()) {
    case Cap::kAvx512: return cap_avx512::kernels_f32();
    case Cap::kAvx2: return cap_avx2::kernels_f32();
    default: return cap_default::kernels_f32();
  }
}

template <>
const Kernels<double>& kernels<double>() {
  switch (cap()) {
    case Cap::kAvx512: return cap_avx512::kernels_f64();
    case Cap::kAvx2: return cap_avx2::kernels_f64();
    default: return cap_default::kernels_f64();
  }
}

template <>
const AttnKernels<float>& attn_kernels<float>() {
  switch (cap()) {
    case Cap::kAvx512: return cap_avx512::attn_kernels_f32();
    case Cap::kAvx2: return cap_avx2::attn_kernels_f32();
    default: return cap_default::attn_kernels_f32();
  }
}

template <>
const AttnKernels<double>& attn_kernels<double>() {
  switch (cap()) {
    case Cap::kAvx512: return cap_avx512::attn_kernels_f64();
    case Cap::kAvx2: return cap_avx2::attn_kernels_f64();
    default: return cap_default::attn_kernels_f64();
  }
}

template <>
const VariantKernels<float>& variant_kernels<float>() {
  switch (cap()) {
    case Cap::kAvx512: return cap_avx512::variant_kernels_f32();
    case Cap::kAvx2: return cap_avx2::variant_kernels_f32();
    default: return cap_default::variant_kernels_f32();
  }
}

template <>
const VariantKernels<double>& variant_kernels<double>() {
  switch (cap()) {
    case Cap::kAvx512: return cap_avx512::variant_kernels_f64();
    case Cap::kAvx2: return cap_avx2::variant_kernels_f64();
    default: return cap_default::variant_kernels_f64();
  }
}

}  // namespace cpu
}  // namespace fused_rnn
