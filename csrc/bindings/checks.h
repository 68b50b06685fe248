// Argument checks shared by the op bindings: every message names the argument.
#pragma once

#include "torch_library.h"

#include <string>

namespace fused_rnn {

inline std::string shape(const at::Tensor& t) { return c10::str(t.sizes()); }

// Dtype and device of `t` must match `x`'s (named `x_name`); its shape must be `want`.
inline void check_like(const char* name, const at::Tensor& t, const char* x_name,
                       const at::Tensor& x, at::IntArrayRef want) {
  TORCH_CHECK(t.device() == x.device(), "fused_rnn: ", name, " is on ", t.device(), " but ",
              x_name, " is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fused_rnn: ", name, " has dtype ",
              t.scalar_type(), " but ", x_name, " has dtype ", x.scalar_type());
  TORCH_CHECK(t.sizes() == want, "fused_rnn: ", name, " must have shape ", want, ", got ",
              shape(t));
}

// Row lengths of a recurrence: int64 on the CPU, [B], each in [0, T].
inline void check_lengths(const at::Tensor& L, int64_t B, int64_t T) {
  TORCH_CHECK(L.device().is_cpu() && L.scalar_type() == at::kLong,
              "fused_rnn: lengths must be an int64 CPU tensor, got ", L.scalar_type(), " on ",
              L.device());
  TORCH_CHECK(L.dim() == 1 && L.size(0) == B, "fused_rnn: lengths must have shape [", B,
              "], got ", shape(L));
  if (B > 0) {
    const int64_t lo = L.min().item<int64_t>(), hi = L.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi <= T, "fused_rnn: lengths must lie in [0, ", T,
                "], got values from ", lo, " to ", hi);
  }
}

inline at::Tensor get(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

// An optional argument, contiguous, or undefined.
inline at::Tensor opt(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

}  // namespace fused_rnn
