// How the loops and bindings hand a tensor to a kernel: its elements as T (a launch type:
// float, double, or launch_types.h's half storage), nullptr for an undefined (absent) one.
#pragma once

#include <ATen/core/Tensor.h>

namespace fused_rnn {

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

}  // namespace fused_rnn
