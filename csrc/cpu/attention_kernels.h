// Fused encoder-decoder attention over raw pointers (no tensors, no torch): per query row,
// the scores, the masked softmax and the context in one pass, never the [B, Tq, Tk, A]
// tensor of additive attention nor, unless asked for, the [B, Tq, Tk] weights. Backward
// recomputes the scores from the saved log-sum-exp of each row (see MATH.md, Attention).
//
// Compiled once per CPU capability with the recurrence kernels (attention_impl.h,
// cap_*.cpp); recurrence.cpp's dispatch picks the table.
#pragma once

#include <cstdint>

namespace fused_rnn {
namespace cpu {

template <typename T>
struct AttnArgs {
  int64_t B, Tq, Tk;
  int64_t D;               // score size: Dk (dot) or A (additive: q and k are projected)
  int64_t Dv;              // value size
  bool additive;           // e = v . tanh(q + k), else e = scale * q . k
  T scale;                 // dot only
  const int64_t* lengths;  // [B] valid keys are j < lengths[b], or nullptr
  const bool* mask;        // [B, Tk] True = attend, or nullptr (neither: all valid)
  const T* q;              // [B, Tq, D]
  const T* k;              // [B, Tk, D]
  const T* vals;           // [B, Tk, Dv]
  const T* v;              // [D] additive only
  T* lse;                  // [B, Tq] forward out, backward in: log sum exp of the valid scores
                           // (-inf for a row with no valid key)

  bool valid(int64_t b, int64_t j) const {
    return lengths ? j < lengths[b] : mask ? mask[b * Tk + j] : true;
  }
};

template <typename T>
struct AttnFwd {
  AttnArgs<T> a;
  T* ctx;      // [B, Tq, Dv]
  T* weights;  // [B, Tq, Tk] or nullptr
};

template <typename T>
struct AttnBwd {
  AttnArgs<T> a;
  const T* dctx;      // [B, Tq, Dv]
  const T* dweights;  // [B, Tq, Tk] or nullptr
  T* dq;              // [B, Tq, D], zero on entry
  T* dk;              // [B, Tk, D], zero on entry
  T* dvals;           // [B, Tk, Dv], zero on entry
};

template <typename T>
struct AttnKernels {
  // Query rows r = b * Tq + i in [r0, r1); scratch: [Tk].
  void (*fwd)(const AttnFwd<T>&, int64_t r0, int64_t r1, T* scratch);
  // Batches [b0, b1) (dk, dvals of a batch sum over its queries: one thread owns them);
  // scratch: [2 * Tk]; dv: [D] this thread's part of the gradient of v (additive).
  void (*bwd)(const AttnBwd<T>&, int64_t b0, int64_t b1, T* scratch, T* dv);
};

namespace cap_default {
const AttnKernels<float>& attn_kernels_f32();
const AttnKernels<double>& attn_kernels_f64();
}  // namespace cap_default
namespace cap_avx2 {
const AttnKernels<float>& attn_kernels_f32();
const AttnKernels<double>& attn_kernels_f64();
}  // namespace cap_avx2
namespace cap_avx512 {
const AttnKernels<float>& attn_kernels_f32();
const AttnKernels<double>& attn_kernels_f64();
}  // namespace cap_avx512

template <typename T>
const AttnKernels<T>& attn_kernels();

}  // namespace cpu
}  // namespace fused_rnn
