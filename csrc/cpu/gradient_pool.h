// Weight-gradient blocks too large for glibc's heap, kept for the next backward.
#pragma once

#include "aten.h"

namespace fused_rnn {
namespace cpu {

// An uninitialised contiguous [numel] tensor of opts' dtype on the CPU for a block of weight
// gradients. From 32 MiB (kPooledBytes; glibc's largest mmap threshold on 64-bit: malloc
// maps and unmaps such blocks at every call, and each call faults all its pages in anew)
// its memory comes from a pool and goes back to it when its last user drops it: a
// decoder's cell backward allocates a block per step, and autograd frees it once added
// into the gradient. The pool keeps at most two free blocks (a step's, and the gradient
// the last step held). Smaller blocks are at::empty's.
at::Tensor gradient_block(int64_t numel, const at::TensorOptions& opts);

}  // namespace cpu
}  // namespace fused_rnn
