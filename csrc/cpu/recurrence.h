// One layer, one direction of LSTM / GRU / RNN on CPU: the time loops around the fused
// pointwise kernels of kernels.h, with ATen for the GEMMs. Arguments are checked by the
// caller (csrc/bindings/recurrence.cpp); here they are trusted.
#pragma once

#include "aten.h"

#include <tuple>
#include <vector>

namespace fused_rnn {
namespace cpu {

// What a forward keeps for its backward. kSaveStates: the states alone, the activations
// left to the backward to recompute a chunk of steps at a time (LSTM and GRU in fp32/fp64
// without a projection; elsewhere it keeps everything): acts is then [0, B, 4H].
enum Saves : int64_t { kSaveNothing = 0, kSaveAll = 1, kSaveStates = 2 };

// x [T, B, I]; h0 [B, P]; c0 [B, H] (LSTM); lengths [B] int64 on CPU or undefined;
// w_ih [G*H, I]; w_hh [G*H, P]; b_ih, b_hh [G*H] or undefined; w_hr [P, H] or undefined.
// Returns y [T, B, P] (natural time order, zero past each row's length), h_n [B, P],
// c_n [B, H] (empty for GRU/RNN) and the tensors backward needs (`saves`, see Saves):
// LSTM (acts [T, B, 4H], hs [T+1, B, P], cs [T+1, B, H][, y_pre [T, B, H]]),
// GRU (acts [T, B, 4H], hs [T+1, B, H]), RNN (hs [T+1, B, H]); hs and acts in loop order.
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> recurrence_forward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_hr, int64_t saves);

// The backward of recurrence_forward, given the same inputs, its saved tensors and the
// gradients dy [T, B, P], dh_n [B, P] (or undefined), dc_n [B, H] (or undefined).
// Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); an entry is an empty tensor
// where the input is absent (c0 for GRU/RNN, biases, w_hr).
std::vector<at::Tensor> recurrence_backward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_hr,
    const std::vector<at::Tensor>& saved, const at::Tensor& dy, const at::Tensor& dh_n,
    const at::Tensor& dc_n);

// Enter (true) or leave (false) a scope in which the caller promises not to write the
// weights other than through in-place ops that bump their version counter (no `.data`
// writes): the forward then packs each weight pair once and reuses the panels while the
// weights' versions stay the same. Scopes nest per thread; leaving the outermost empties
// the cache.
void panel_cache_scope(bool enter);

}  // namespace cpu
}  // namespace fused_rnn
