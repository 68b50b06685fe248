// torch.ops.fused_rnn.variant_forward / variant_backward: argument checks (every message
// names the argument), then the CPU loops of csrc/cpu/variant_recurrence.h.
#include "checks.h"

#include "../cpu/kernels.h"
#include "../cpu/variant_recurrence.h"

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;

bool given(const optional<Tensor>& t) { return t.has_value() && t->defined(); }

Tensor contiguous_or_none(const optional<Tensor>& t) { return given(t) ? t->contiguous() : Tensor(); }

struct VSizes {
  int64_t T, B, I, G, H;
};

// The checks shared by forward and backward; returns the sizes.
VSizes check_variant(int64_t mode, const Tensor& x, const Tensor& h0, const optional<Tensor>& c0,
                     const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
                     const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                     const optional<Tensor>& ln_ih, const optional<Tensor>& ln_hh,
                     const optional<Tensor>& ln_c_weight, const optional<Tensor>& ln_c_bias,
                     const optional<Tensor>& keep_h, const optional<Tensor>& keep_c) {
  TORCH_CHECK(mode == cpu::kLSTM || mode == cpu::kGRU,
              "fused_rnn: variant mode must be 0 (LSTM) or 1 (GRU), got ", mode);
  const bool lstm = mode == cpu::kLSTM;
  const char* name = lstm ? "LSTM" : "GRU";
  TORCH_CHECK(x.dim() == 3, "fused_rnn: x must be 3-D [T, B, I], got shape ", shape(x));
  TORCH_CHECK(x.device().is_cpu(), "fused_rnn: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "fused_rnn: x must be float32 or float64 on the cpu backend, got ", x.scalar_type());
  TORCH_CHECK(x.size(0) >= 1, "fused_rnn: x must have at least one step, got shape ", shape(x));
  VSizes s{x.size(0), x.size(1), x.size(2), lstm ? 4 : 3, 0};
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

cpu::VariantWeightTensors weights(const Tensor& w_ih, const Tensor& w_hh,
                                  const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                                  const optional<Tensor>& ln_ih, const optional<Tensor>& ln_hh,
                                  const optional<Tensor>& ln_c_weight,
                                  const optional<Tensor>& ln_c_bias) {
  return {w_ih.contiguous(),          w_hh.contiguous(),          contiguous_or_none(b_ih),
          contiguous_or_none(b_hh),   contiguous_or_none(ln_ih),  contiguous_or_none(ln_hh),
          contiguous_or_none(ln_c_weight), contiguous_or_none(ln_c_bias)};
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> variant_forward(
    int64_t mode, bool reverse, const Tensor& x, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& ln_ih,
    const optional<Tensor>& ln_hh, const optional<Tensor>& ln_c_weight,
    const optional<Tensor>& ln_c_bias, const optional<Tensor>& keep_h,
    const optional<Tensor>& keep_c, bool need_saved) {
  check_variant(mode, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight,
                ln_c_bias, keep_h, keep_c);
  return cpu::variant_forward(
      mode, reverse, x, h0, contiguous_or_none(c0), contiguous_or_none(lengths),
      weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias),
      contiguous_or_none(keep_h), contiguous_or_none(keep_c), need_saved);
}

std::vector<Tensor> variant_backward(
    int64_t mode, bool reverse, const Tensor& x, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& ln_ih,
    const optional<Tensor>& ln_hh, const optional<Tensor>& ln_c_weight,
    const optional<Tensor>& ln_c_bias, const optional<Tensor>& keep_h,
    const optional<Tensor>& keep_c, at::TensorList saved, const Tensor& dy,
    const optional<Tensor>& dh_n, const optional<Tensor>& dc_n) {
  const VSizes s = check_variant(mode, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh,
                                 ln_c_weight, ln_c_bias, keep_h, keep_c);
  const bool lstm = mode == cpu::kLSTM, ln = given(ln_ih);
  const int64_t GH = s.G * s.H;
  // What variant_forward saved (see csrc/cpu/variant_recurrence.h), in order.
  std::vector<std::pair<const char*, std::vector<int64_t>>> want;
  want.push_back({"saved[p]", {s.T, s.B, lstm || !ln ? 4 * s.H : GH}});
  if (ln) {
    want.push_back({"saved[rstd_p]", {s.T, s.B}});
    want.push_back({"saved[r]", {s.T, s.B, GH}});
    want.push_back({"saved[rstd_r]", {s.T, s.B}});
  }
  if (lstm) want.push_back({"saved[cs]", {s.T, s.B, s.H}});
  want.push_back({given(lengths) ? "saved[hs]" : "saved[y]", {s.T, s.B, s.H}});
  TORCH_CHECK(saved.size() == want.size(), "fused_rnn: saved must hold the ", want.size(),
              " tensors variant_forward returned for this call, got ", saved.size());
  for (size_t i = 0; i < want.size(); ++i) {
    check_like(want[i].first, saved[i], "x", x, want[i].second);
    TORCH_CHECK(saved[i].is_contiguous(), "fused_rnn: ", want[i].first, " must be contiguous");
  }
  check_like("dy", dy, "x", x, {s.T, s.B, s.H});
  if (given(dh_n)) check_like("dh_n", *dh_n, "x", x, {s.B, s.H});
  if (given(dc_n)) {
    TORCH_CHECK(lstm, "fused_rnn: dc_n must be None for GRU");
    check_like("dc_n", *dc_n, "x", x, {s.B, s.H});
  }
  return cpu::variant_backward(
      mode, reverse, x, h0, contiguous_or_none(c0), contiguous_or_none(lengths),
      weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias),
      contiguous_or_none(keep_h), contiguous_or_none(keep_c), saved.vec(), dy,
      contiguous_or_none(dh_n), contiguous_or_none(dc_n));
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def(
      "variant_forward(int mode, bool reverse, Tensor x, Tensor h0, Tensor? c0, Tensor? lengths, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? ln_ih, Tensor? ln_hh, "
      "Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? keep_h, Tensor? keep_c, bool need_saved) "
      "-> (Tensor, Tensor, Tensor, Tensor[])");
  m.def(
      "variant_backward(int mode, bool reverse, Tensor x, Tensor h0, Tensor? c0, Tensor? lengths, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? ln_ih, Tensor? ln_hh, "
      "Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? keep_h, Tensor? keep_c, Tensor[] saved, "
      "Tensor dy, Tensor? dh_n, Tensor? dc_n) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("variant_forward", &fused_rnn::variant_forward);
  m.impl("variant_backward", &fused_rnn::variant_backward);
}
