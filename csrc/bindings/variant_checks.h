// Argument checks of the variant recurrence ops (the cpu backend's variant_* and the cuda
// backend's stepwise_variant_*): every message names the argument. Device and dtype of x
// are the caller's to check; every other tensor must match x's.
#pragma once

#include "checks.h"

#include "../common/variant_weights.h"
#include "fused_rnn/recurrence_step.cuh"

namespace fused_rnn {

inline bool given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

struct VariantSizes {
  int64_t T, B, I, G, H;
};

// The arguments forward and backward share; returns the sizes.
inline VariantSizes check_variant_args(
    int64_t mode, const at::Tensor& x, const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
    const c10::optional<at::Tensor>& lengths, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& ln_ih, const c10::optional<at::Tensor>& ln_hh,
    const c10::optional<at::Tensor>& ln_c_weight, const c10::optional<at::Tensor>& ln_c_bias,
    const c10::optional<at::Tensor>& keep_h, const c10::optional<at::Tensor>& keep_c) {
  TORCH_CHECK(mode == cuda::kLSTM || mode == cuda::kGRU,
              "fused_rnn: variant mode must be 0 (LSTM) or 1 (GRU), got ", mode);
  const bool lstm = mode == cuda::kLSTM;
  const char* name = lstm ? "LSTM" : "GRU";
  TORCH_CHECK(x.dim() == 3, "fused_rnn: x must be 3-D [T, B, I], got shape ", shape(x));
  TORCH_CHECK(x.size(0) >= 1, "fused_rnn: x must have at least one step, got shape ", shape(x));
  VariantSizes s{x.size(0), x.size(1), x.size(2), lstm ? 4 : 3, 0};
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % s.G == 0 && w_ih.size(1) == s.I,
              "fused_rnn: w_ih must have shape [", s.G, " * hidden_size, ", s.I, "] for ", name,
              " with input size ", s.I, ", got ", shape(w_ih));
  s.H = w_ih.size(0) / s.G;
  const int64_t GH = s.G * s.H;
  check_like("w_ih", w_ih, "x", x, {GH, s.I});
  check_like("w_hh", w_hh, "x", x, {GH, s.H});
  TORCH_CHECK(given(b_ih) == given(b_hh), "fused_rnn: b_ih and b_hh must be given together");
  if (given(b_ih)) {
    check_like("b_ih", *b_ih, "x", x, {GH});
    check_like("b_hh", *b_hh, "x", x, {GH});
  }
  const bool ln = given(ln_ih);
  TORCH_CHECK(given(ln_hh) == ln, "fused_rnn: ln_ih and ln_hh must be given together");
  if (ln) {
    check_like("ln_ih", *ln_ih, "x", x, {GH});
    check_like("ln_hh", *ln_hh, "x", x, {GH});
  }
  const bool want_c = ln && lstm;
  TORCH_CHECK(given(ln_c_weight) == want_c && given(ln_c_bias) == want_c,
              "fused_rnn: ln_c_weight and ln_c_bias must be given ",
              want_c ? "for a LayerNorm LSTM" : "only for a LayerNorm LSTM (ln_ih given)");
  if (want_c) {
    check_like("ln_c_weight", *ln_c_weight, "x", x, {s.H});
    check_like("ln_c_bias", *ln_c_bias, "x", x, {s.H});
  }
  check_like("h0", h0, "x", x, {s.B, s.H});
  if (lstm) {
    TORCH_CHECK(given(c0), "fused_rnn: c0 is required for LSTM");
    check_like("c0", *c0, "x", x, {s.B, s.H});
  } else {
    TORCH_CHECK(!given(c0), "fused_rnn: c0 must be None for GRU");
  }
  if (given(keep_h)) check_like("keep_h", *keep_h, "x", x, {s.T, s.B, s.H});
  if (given(keep_c)) {
    TORCH_CHECK(lstm, "fused_rnn: keep_c must be None for GRU");
    check_like("keep_c", *keep_c, "x", x, {s.T, s.B, s.H});
  }
  if (given(lengths)) check_lengths(*lengths, s.B, s.T);
  return s;
}

// The weights as the loops take them: contiguous, undefined where absent.
inline VariantWeightTensors variant_weights(
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& ln_ih,
    const c10::optional<at::Tensor>& ln_hh, const c10::optional<at::Tensor>& ln_c_weight,
    const c10::optional<at::Tensor>& ln_c_bias) {
  return {w_ih.contiguous(), w_hh.contiguous(), opt(b_ih),        opt(b_hh),
          opt(ln_ih),        opt(ln_hh),        opt(ln_c_weight), opt(ln_c_bias)};
}

// The gradients the backward ops take besides `saved`.
inline void check_variant_grads(int64_t mode, const at::Tensor& x, const VariantSizes& s,
                                const at::Tensor& dy, const c10::optional<at::Tensor>& dh_n,
                                const c10::optional<at::Tensor>& dc_n) {
  check_like("dy", dy, "x", x, {s.T, s.B, s.H});
  if (given(dh_n)) check_like("dh_n", *dh_n, "x", x, {s.B, s.H});
  if (given(dc_n)) {
    TORCH_CHECK(mode == cuda::kLSTM, "fused_rnn: dc_n must be None for GRU");
    check_like("dc_n", *dc_n, "x", x, {s.B, s.H});
  }
}

}  // namespace fused_rnn
