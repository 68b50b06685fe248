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

inline at::Tensor get(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

}  // namespace fused_rnn
