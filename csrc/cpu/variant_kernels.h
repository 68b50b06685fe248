// Row passes of the variant recurrences (LayerNorm LSTM/GRU, zoneout; see
// fused_rnn/ops/variants/layout.py for the equations), over raw pointers: no tensors. The
// time loops and the GEMMs live in variant_recurrence.cpp.
//
// One step of the forward is the recurrent GEMM h W_hh^T (the driver's) and then ONE pass
// per batch row: LN of the recurrent row, gates, c~, LN of c~, output, zoneout, length mask.
// One step of the backward is one pass per row (gate gradients, LN backward of c~, of the
// recurrent row and of the input row) and then the driver's GEMM dh += dR W_hh.
//
// Slots. Everything saved per step and row sits in slot [p, b] of a [T, B, ...] buffer, p the
// natural time position the step processed (StepShape::pos): the input-side rows then line
// up with x and dx, and each slot is visited exactly once (an inactive row at loop step t
// visits slot t, which no active step uses). Input-side slots (`p` below):
//   LayerNorm:      LN(x W_ih^T) [G*H]                                -> backward: dP [G*H]
//   LSTM, no LN:    x W_ih^T [4H] -> pre-activations a (with biases)   -> backward: da [4H]
//   GRU, no LN:     x W_ih^T in [3H] of [4H] -> [a_r, a_z, a_xn, a_hn] -> [da_r, da_z, da_n, da_n*r]
// LayerNorm also saves LN(h W_hh^T) [G*H] (-> dR) and both rows' 1/sigma.
//
// Compiled once per CPU capability with kernels_impl.h (cap_*.cpp); the driver picks a table.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace fused_rnn {
namespace cpu {

// What both directions of a step read: sizes, weights and zoneout keeps.
template <typename T>
struct VariantParams {
  StepShape s;          // P == H
  bool lstm;            // LSTM (4 gates) or GRU (3)
  bool ln;              // layer norm
  int64_t p_ld;         // row stride of the input-side slots: 4H, or 3H for GRU with LN
  const T* bias;        // [G*H] b_ih + b_hh (GRU: b_ih + [b_hr, b_hz, 0]), or nullptr
  const T* b_hn;        // [H] GRU: b_hn (inside the reset product), or nullptr
  const T* ln_ih;       // [G*H] LN: gain of the input row
  const T* ln_hh;       // [G*H] LN: gain of the recurrent row
  const T* ln_cw;       // [H] LN LSTM: gain of LN(c~)
  const T* ln_cb;       // [H] LN LSTM: shift of LN(c~)
  const T* keep_h;      // [T, B, H] natural time order, or nullptr (no zoneout)
  const T* keep_c;      // [T, B, H] LSTM, or nullptr
};

template <typename T>
struct VariantFwd {
  VariantParams<T> w;
  const T* r;       // [B, G*H] h W_hh^T of this step (loop order: row b)
  T* p;             // [T, B, p_ld] input-side slots (see above)
  bool save;        // write the slots backward reads
  T* rn;            // [T, B, G*H] LN, save: LN(h W_hh^T) slots
  T* rstd_r;        // [T, B] LN, save: 1/sigma of the recurrent rows
  T* h;             // [B, H] in: state, out: the new state
  T* c;             // [B, H] LSTM: in: cell, out: the new cell
  T* y;             // [T, B, H] output, natural time order
  T* h_save;        // [T, B, H] state before each slot's step, or nullptr
  T* c_save;        // [T, B, H] LSTM, save: cell before each slot's step
};

template <typename T>
struct VariantBwd {
  VariantParams<T> w;
  const T* dy;      // [T, B, H] natural time order
  T* dh;            // [B, H] in: dL/dh' less dy; out: its part that does not go through W_hh
  T* dc;            // [B, H] LSTM: in dL/dc', out dL/dc
  T* p;             // [T, B, p_ld] input-side slots: in saved, out gradients (see above)
  const T* rstd_p;  // [T, B] LN: 1/sigma of the input rows
  T* rn;            // [T, B, G*H] LN: in LN(h W_hh^T), out dR
  const T* rstd_r;  // [T, B] LN
  const T* hs;      // state before slot [q, b]'s step: hs[q = p + hs_shift, b] if q in [0, T),
  int64_t hs_shift; // else h0 (states kept in y: forward -1, reverse +1; own buffer: 0)
  const T* h0;      // [B, H]
  const T* c_save;  // [T, B, H] LSTM: cell before each slot's step
  T* dr;            // [B, G*H] hidden-side gate gradients of this step (loop order), for dh += dr W_hh
  T* red;           // [B, reduce_count] per-row terms of the gain and bias gradients
};

// Columns of VariantBwd::red per row, summed over all rows and steps by the driver:
// LSTM [da (4H) | LN: da*P~ (4H), da*R~ (4H), du*LN(c~) (H), du (H)], u = ln_cw*LN(c~)+ln_cb;
// GRU [da_r, da_z, da_n, da_n*r (4H) | LN: da_i*P~ (3H), da_h*R~ (3H)].
inline int64_t reduce_count(bool lstm, bool ln, int64_t H) {
  return lstm ? (ln ? 14 : 4) * H : (ln ? 10 : 4) * H;
}

template <typename T>
struct VariantKernels {
  // In place over the rows [r0, r1) of v [rows, n]: LN(v) (no gain), 1/sigma to rstd [rows].
  void (*ln_rows)(T* v, int64_t n, T* rstd, int64_t r0, int64_t r1);
  void (*fwd_rows)(const VariantFwd<T>&, int64_t b0, int64_t b1);
  void (*bwd_rows)(const VariantBwd<T>&, int64_t b0, int64_t b1);
  // acc[c] += sum over rows (in order) of m[row, c], columns [c0, c1) of m [rows, cols].
  void (*col_sum)(const T* m, int64_t rows, int64_t cols, T* acc, int64_t c0, int64_t c1);
};

namespace cap_default {
const VariantKernels<float>& variant_kernels_f32();
const VariantKernels<double>& variant_kernels_f64();
}  // namespace cap_default
namespace cap_avx2 {
const VariantKernels<float>& variant_kernels_f32();
const VariantKernels<double>& variant_kernels_f64();
}  // namespace cap_avx2
namespace cap_avx512 {
const VariantKernels<float>& variant_kernels_f32();
const VariantKernels<double>& variant_kernels_f64();
}  // namespace cap_avx512

// The table of the capability kernel_capability() names.
template <typename T>
const VariantKernels<T>& variant_kernels();

}  // namespace cpu
}  // namespace fused_rnn
