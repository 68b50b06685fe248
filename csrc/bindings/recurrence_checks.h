// Argument checks of the recurrence ops (the cpu backend's and the stepwise loops'): every
// message names the argument. Device and dtype are the caller's to check.
#pragma once

#include "checks.h"

#include "fused_rnn/recurrence_step.cuh"

namespace fused_rnn {

// The modes of the ops' `mode` argument (the same numbers in csrc/cpu and the CUDA headers).
inline const char* mode_name(int64_t mode) {
  switch (mode) {
    case cuda::kLSTM: return "LSTM";
    case cuda::kGRU: return "GRU";
    case cuda::kRNN_TANH: return "RNN_TANH";
    default: return "RNN_RELU";
  }
}

struct RecurrenceSizes {
  int64_t T, B, I, G, H, P;
};

// The shapes, dtypes and devices (all x's) of the arguments shared by forward and backward;
// returns the sizes.
inline RecurrenceSizes check_recurrence_args(
    int64_t mode, const at::Tensor& x, const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
    const c10::optional<at::Tensor>& lengths, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr) {
  TORCH_CHECK(mode >= cuda::kLSTM && mode <= cuda::kRNN_RELU,
              "fused_rnn: mode must be 0 (LSTM), 1 (GRU), 2 (RNN_TANH) or 3 (RNN_RELU), got ", mode);
  TORCH_CHECK(x.dim() == 3, "fused_rnn: x must be 3-D [T, B, I], got shape ", shape(x));
  TORCH_CHECK(x.size(0) >= 1, "fused_rnn: x must have at least one step, got shape ", shape(x));
  const auto like_x = [&](const char* name, const at::Tensor& t, at::IntArrayRef want) {
    check_like(name, t, "x", x, want);
  };
  RecurrenceSizes s;
  s.T = x.size(0);
  s.B = x.size(1);
  s.I = x.size(2);
  s.G = cuda::gate_count(int(mode));
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % s.G == 0 && w_ih.size(1) == s.I,
              "fused_rnn: w_ih must have shape [", s.G, " * hidden_size, ", s.I, "] for ",
              mode_name(mode), " with input size ", s.I, ", got ", shape(w_ih));
  s.H = w_ih.size(0) / s.G;
  like_x("w_ih", w_ih, {s.G * s.H, s.I});
  const bool proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK(!proj || mode == cuda::kLSTM, "fused_rnn: w_hr (projection) is only for LSTM, not ",
              mode_name(mode));
  s.P = proj ? w_hr->size(0) : s.H;
  if (proj) {
    TORCH_CHECK(w_hr->dim() == 2, "fused_rnn: w_hr must be 2-D [proj_size, hidden_size], got ",
                shape(*w_hr));
    like_x("w_hr", *w_hr, {s.P, s.H});
  }
  like_x("w_hh", w_hh, {s.G * s.H, s.P});
  const bool has_b_ih = b_ih.has_value() && b_ih->defined();
  const bool has_b_hh = b_hh.has_value() && b_hh->defined();
  TORCH_CHECK(has_b_ih == has_b_hh, "fused_rnn: b_ih and b_hh must be given together");
  if (has_b_ih) {
    like_x("b_ih", *b_ih, {s.G * s.H});
    like_x("b_hh", *b_hh, {s.G * s.H});
  }
  like_x("h0", h0, {s.B, s.P});
  const bool has_c0 = c0.has_value() && c0->defined();
  if (mode == cuda::kLSTM) {
    TORCH_CHECK(has_c0, "fused_rnn: c0 is required for LSTM");
    like_x("c0", *c0, {s.B, s.H});
  } else {
    TORCH_CHECK(!has_c0, "fused_rnn: c0 must be None for ", mode_name(mode));
  }
  if (lengths.has_value() && lengths->defined()) check_lengths(*lengths, s.B, s.T);
  return s;  // any weight layout: the callers pass them on through .contiguous()
}

// The gradients the backward ops take besides `saved`.
inline void check_output_grads(int64_t mode, const at::Tensor& x, const RecurrenceSizes& s,
                               const at::Tensor& dy, const c10::optional<at::Tensor>& dh_n,
                               const c10::optional<at::Tensor>& dc_n) {
  check_like("dy", dy, "x", x, {s.T, s.B, s.P});
  if (dh_n.has_value() && dh_n->defined()) check_like("dh_n", *dh_n, "x", x, {s.B, s.P});
  if (dc_n.has_value() && dc_n->defined()) {
    TORCH_CHECK(mode == cuda::kLSTM, "fused_rnn: dc_n must be None for ", mode_name(mode));
    check_like("dc_n", *dc_n, "x", x, {s.B, s.H});
  }
}

}  // namespace fused_rnn
