// torch.ops.fused_rnn.recurrence_forward / recurrence_backward: argument checks (every
// message names the argument), then the CPU loops of csrc/cpu/recurrence.h.
//
// Importing the Python module fused_rnn._C (an empty module) loads this library, and the
// static initialisers of TORCH_LIBRARY register the ops.
#include "recurrence_ops.h"

#include "recurrence_checks.h"
#include "schemas.h"

#include <string>

#include "../cpu/kernels.h"
#include "../cpu/recurrence.h"

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;

void check_like_x(const char* name, const Tensor& t, const Tensor& x, at::IntArrayRef want) {
  check_like(name, t, "x", x, want);
}

// check_recurrence_args, on the CPU, in float32 or float64 (or bfloat16 where bf16 is set).
RecurrenceSizes check_common(int64_t mode, const Tensor& x, const Tensor& h0,
                             const optional<Tensor>& c0, const optional<Tensor>& lengths,
                             const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
                             const optional<Tensor>& b_hh, const optional<Tensor>& w_hr,
                             bool bf16 = false) {
  TORCH_CHECK(x.device().is_cpu(), "fused_rnn: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                  (bf16 && x.scalar_type() == at::kBFloat16),
              "fused_rnn: x must be float32 or float64", bf16 ? " (or bfloat16)" : "",
              " on the cpu backend, got ", x.scalar_type());
  return check_recurrence_args(mode, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> recurrence_forward(
    int64_t mode, bool reverse, const Tensor& x, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& w_hr,
    int64_t saves) {
  check_common(mode, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr, /*bf16=*/true);
  TORCH_CHECK(saves >= cpu::kSaveNothing && saves <= cpu::kSaveStates,
              "fused_rnn: saves must be 0 (nothing), 1 (all) or 2 (the states), got ", saves);
  return cpu::recurrence_forward(mode, reverse, x, h0, get(c0), get(lengths), w_ih.contiguous(),
                                 w_hh.contiguous(), get(b_ih), get(b_hh),
                                 w_hr.has_value() && w_hr->defined() ? w_hr->contiguous() : Tensor(),
                                 saves);
}

std::vector<Tensor> recurrence_backward(
    int64_t mode, bool reverse, const Tensor& x, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& w_hr,
    at::TensorList saved, const Tensor& dy, const optional<Tensor>& dh_n,
    const optional<Tensor>& dc_n) {
  const RecurrenceSizes s =
      check_common(mode, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr, /*bf16=*/true);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const size_t want = (cpu::act_count(mode) ? 1 : 0) + 1 + (mode == cpu::kLSTM ? 1 : 0) + proj;
  TORCH_CHECK(saved.size() == want, "fused_rnn: saved must hold the ", want,
              " tensors recurrence_forward returned for ", mode_name(mode), ", got ", saved.size());
  size_t n = 0;
  if (cpu::act_count(mode)) {
    // [0, B, 4H]: not kept, recomputed (kSaveStates; fp32/fp64 without a projection).
    const bool recomputed = saved[n].size(0) == 0 && s.T > 0 && !proj &&
                            x.scalar_type() != at::kBFloat16;
    check_like_x("saved[acts]", saved[n++], x,
                 {recomputed ? 0 : s.T, s.B, cpu::act_count(mode) * s.H});
  }
  // Forward in time without lengths or projection, the states are saved as the output y.
  const bool states_in_y = !reverse && !(lengths.has_value() && lengths->defined()) && !proj;
  check_like_x(states_in_y ? "saved[y]" : "saved[hs]", saved[n++], x,
               {states_in_y ? s.T : s.T + 1, s.B, s.P});
  if (mode == cpu::kLSTM) check_like_x("saved[cs]", saved[n++], x, {s.T + 1, s.B, s.H});
  if (proj) check_like_x("saved[y_pre]", saved[n++], x, {s.T, s.B, s.H});
  for (const Tensor& t : saved) {
    TORCH_CHECK(t.is_contiguous(), "fused_rnn: saved tensors must be contiguous");
  }
  check_output_grads(mode, x, s, dy, dh_n, dc_n);
  return cpu::recurrence_backward(mode, reverse, x, h0, get(c0), get(lengths), w_ih.contiguous(),
                                  w_hh.contiguous(), get(b_ih), get(b_hh),
                                  proj ? w_hr->contiguous() : Tensor(), saved.vec(), dy,
                                  get(dh_n), get(dc_n));
}

namespace {

std::string capability() { return cpu::kernel_capability(); }
bool bf16_pairs() { return cpu::bf16_pairs_fwd() != nullptr; }

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY(fused_rnn, m) {
  m.def((std::string("recurrence_forward") + fused_rnn::schema::kRecurrenceForward).c_str());
  m.def((std::string("recurrence_backward") + fused_rnn::schema::kRecurrenceBackward).c_str());
  m.def("cpu_capability() -> str", &fused_rnn::capability);
  m.def("cpu_bf16_pairs() -> bool", &fused_rnn::bf16_pairs);
  m.def("panel_cache_scope(bool enter) -> ()", &fused_rnn::cpu::panel_cache_scope);
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("recurrence_forward", &fused_rnn::recurrence_forward);
  m.impl("recurrence_backward", &fused_rnn::recurrence_backward);
}

// fused_rnn._C: an empty Python module; importing it registers the ops above.
static struct PyModuleDef fused_rnn_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                                "fused_rnn's compiled ops (torch.ops.fused_rnn)",
                                                -1, nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fused_rnn_c_module); }
