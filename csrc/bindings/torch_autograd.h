// torch's C++ autograd (custom Functions, their nodes), seen as system headers for the
// reason torch_library.h gives (C++20 bit-field initialisers in c10/core/AutogradState.h).
#pragma once
#pragma GCC system_header

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
