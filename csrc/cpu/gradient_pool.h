// Weight-gradient blocks too large for glibc's heap, kept for the next backward.
#pragma once

#include "aten.h"

namespace fused_rnn {
namespace cpu {

// An uninitialised contiguous [numel] tensor of opts' dtype on the CPU for a block of weight
// gradients. From 4 MiB (kPooledBytes) its memory comes from a pool and goes back to it
// when its last user drops it: a decoder's cell backward allocates a block per step, and
// autograd frees it once added into the gradient. From 32 MiB (glibc's largest mmap
// threshold on 64-bit) malloc maps and unmaps such blocks at every call, each call faulting
// all its pages in anew; below, glibc's heap keeps them only while nothing lets its top be
// trimmed: an LSTMCell loop (B=16, I=H=512, 8 MiB blocks, 10 steps + backward) faulted
// 1.4k-6.3k pages per loop on the heap once MKL's buffers no longer pinned it (the
// small-batch kernels), 0.3k-2.1k pooled (9 fresh processes each). The pool keeps at most
// two free blocks (a step's, and the gradient the last step held). Smaller blocks are
// at::empty's.
at::Tensor gradient_block(int64_t numel, const at::TensorOptions& opts);

}  // namespace cpu
}  // namespace fused_rnn
