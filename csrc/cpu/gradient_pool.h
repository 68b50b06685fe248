// Weight-gradient blocks too large for glibc's heap, kept for the next backward.
#pragma once

#include "aten.h"

namespace fused_rnn {
namespace cpu {

// Blocks of at least this many bytes come from the pool (glibc's largest mmap threshold on
// 64-bit): malloc maps and unmaps them at every call, and each call faults all its pages
// in anew.
constexpr int64_t kPooledBytes = int64_t(32) << 20;

// An uninitialised contiguous [numel] tensor of opts' dtype on the CPU, whose memory goes
// back to the pool when its last user drops it: a decoder's cell backward allocates a
// weight-gradient block per step, and autograd frees it once added into the gradient.
// The pool keeps at most two free blocks (a step's, and the gradient the last step held).
at::Tensor pooled_empty(int64_t numel, const at::TensorOptions& opts);

}  // namespace cpu
}  // namespace fused_rnn
