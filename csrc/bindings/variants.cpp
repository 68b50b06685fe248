// torch.ops.fused_rnn.variant_forward / variant_backward: argument checks (every message
// names the argument), then the CPU loops of csrc/cpu/variant_recurrence.h.
#include "schemas.h"
#include "variant_checks.h"

#include "../cpu/kernels.h"
#include "../cpu/variant_recurrence.h"

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;

void check_cpu_x(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "fused_rnn: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "fused_rnn: x must be float32 or float64 on the cpu backend, got ", x.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> variant_forward(
    int64_t mode, bool reverse, const Tensor& x, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& ln_ih,
    const optional<Tensor>& ln_hh, const optional<Tensor>& ln_c_weight,
    const optional<Tensor>& ln_c_bias, const optional<Tensor>& keep_h,
    const optional<Tensor>& keep_c, bool need_saved) {
  check_cpu_x(x);
  check_variant_args(mode, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight,
                     ln_c_bias, keep_h, keep_c);
  return cpu::variant_forward(
      mode, reverse, x, h0, opt(c0), opt(lengths),
      variant_weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias),
      opt(keep_h), opt(keep_c), need_saved);
}

std::vector<Tensor> variant_backward(
    int64_t mode, bool reverse, const Tensor& x, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& ln_ih,
    const optional<Tensor>& ln_hh, const optional<Tensor>& ln_c_weight,
    const optional<Tensor>& ln_c_bias, const optional<Tensor>& keep_h,
    const optional<Tensor>& keep_c, at::TensorList saved, const Tensor& dy,
    const optional<Tensor>& dh_n, const optional<Tensor>& dc_n) {
  check_cpu_x(x);
  const VariantSizes s = check_variant_args(mode, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh,
                                            ln_ih, ln_hh, ln_c_weight, ln_c_bias, keep_h, keep_c);
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
  check_variant_grads(mode, x, s, dy, dh_n, dc_n);
  return cpu::variant_backward(
      mode, reverse, x, h0, opt(c0), opt(lengths),
      variant_weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias),
      opt(keep_h), opt(keep_c), saved.vec(), dy,
      opt(dh_n), opt(dc_n));
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def((std::string("variant_forward") + fused_rnn::schema::kVariantForward).c_str());
  m.def((std::string("variant_backward") + fused_rnn::schema::kVariantBackward).c_str());
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("variant_forward", &fused_rnn::variant_forward);
  m.impl("variant_backward", &fused_rnn::variant_backward);
}
