// Buffers that scale with a sequence (states, activations, outputs and their gradients),
// on memory the kernel can fault in 2 MiB at a time.
#pragma once

#include "aten.h"

namespace fused_rnn {
namespace cpu {

// From 32 MiB glibc maps every allocation anew (its largest mmap threshold on 64-bit) and
// unmaps it on free, so each call faults such a buffer in a 4 KiB page at a time: an LSTM
// I=H=256 B=64 T=1000 fwd+bwd faulted 214k pages (836 MiB) per call, 30% of its time
// (785 vs 555 ms with glibc told never to map). These buffers are 2 MiB-aligned and
// madvise'd MADV_HUGEPAGE, as ATen's THP_MEM_ALLOC_ENABLE=1 does for all of its own: the
// same call then takes 6.8k faults. Nothing is kept between calls (a pool would save the
// zeroing too, at the price of holding the peak after the step). Smaller buffers are
// at::empty's, whose heap keeps them. Uninitialised.
at::Tensor sequence_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts);

// t itself when contiguous, else a contiguous copy in a sequence_buffer.
at::Tensor contiguous_sequence(const at::Tensor& t);

// src's rows `index` (int64), gathered into a sequence_buffer (src.index_select(0, index)).
at::Tensor gathered_rows(const at::Tensor& src, const at::Tensor& index);

}  // namespace cpu
}  // namespace fused_rnn
