// One layer, one direction of the variant recurrences on CPU: LayerNorm LSTM/GRU and zoneout
// (equations: fused_rnn/ops/variants/layout.py). The time loops around the row passes of
// variant_kernels.h, with ATen / MKL for the GEMMs. Arguments are checked by the caller
// (csrc/bindings/variants.cpp); here they are trusted.
#pragma once

#include "aten.h"

#include "../common/variant_weights.h"

#include <tuple>
#include <vector>

namespace fused_rnn {
namespace cpu {

// VariantWeightTensors: ../common/variant_weights.h.

// mode 0 LSTM, 1 GRU. x [T, B, I]; h0 [B, H]; c0 [B, H] (LSTM); lengths [B] int64 or undefined;
// keep_h, keep_c [T, B, H] zoneout keeps (natural time order) or undefined.
// Returns y [T, B, H], h_n [B, H], c_n [B, H] (empty for GRU) and, if need_saved, what the
// backward reads (slots indexed by natural time position, see variant_kernels.h):
// layer norm (P~ [T, B, G*H], rstd_p [T, B], R~ [T, B, G*H], rstd_r [T, B], ...),
// else (A [T, B, 4H], ...); then LSTM cs [T, B, H] (the cell before each slot's step); last
// hs [T, B, H], the state before each slot's step, with lengths; without them y itself
// (forward, slot p's state is y[p-1], reverse y[p+1], h0 at the first step).
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> variant_forward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const VariantWeightTensors& w, const at::Tensor& keep_h,
    const at::Tensor& keep_c, bool need_saved);

// The backward of variant_forward, given the same inputs and its saved tensors (which it
// overwrites with gradients) and dy [T, B, H], dh_n [B, H] / dc_n [B, H] (or undefined).
// Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh, dln_cw, dln_cb); an
// entry is an empty tensor where the input is absent.
std::vector<at::Tensor> variant_backward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const VariantWeightTensors& w, const at::Tensor& keep_h,
    const at::Tensor& keep_c, const std::vector<at::Tensor>& saved,
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n);

}  // namespace cpu
}  // namespace fused_rnn
