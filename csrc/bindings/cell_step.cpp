// torch.ops.fused_rnn.cell_step: one step of LSTMCell / GRUCell / RNNCell on the cpu
// backend, its autograd in C++. A decoder calls its cell once per step: at B=1, H=256 the
// Python of an autograd.Function (apply, ctx, the backward's unpacking and launchers) cost
// ~80 us per step and backward, more than the step's own math and twice torch.nn's C++
// cell. The math is recurrence_forward/_backward's for T=1 (csrc/bindings/recurrence.cpp).
//
// As the Python Function (fused_rnn/ops/recurrence/function.py): the backward writes the
// gate gradients over the saved activations, so a second backward through a retained graph
// runs the forward again first; the backward is not differentiable (create_graph gives
// gradients whose own backward raises, as @once_differentiable's); autocast is off inside,
// so that a backward run under torch.autocast computes as its forward did.
#include "recurrence_ops.h"
#include "torch_autograd.h"
#include "torch_library.h"

#include "checks.h"

#include <vector>

#include "../cpu/kernels.h"

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

optional<Tensor> opt(const Tensor& t) {
  return t.defined() ? optional<Tensor>(t) : c10::nullopt;
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> run_forward(
    int64_t mode, const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh, bool need_saved) {
  return recurrence_forward(mode, false, x.unsqueeze(0), h0, opt(c0), c10::nullopt, w_ih,
                            w_hh, opt(b_ih), opt(b_hh), c10::nullopt, need_saved);
}

// The forward saves its inputs (x, h0, c0, w_ih, w_hh, b_ih, b_hh), then the tensors
// recurrence_forward saves.
constexpr size_t kInputs = 7;

class CellStep : public torch::autograd::Function<CellStep> {
 public:
  // x [B, I], h0 [B, H], c0 [B, H] (LSTM; else none); no biases for bias=False.
  // (Optional tensors: apply() cannot take undefined ones.)
  static variable_list forward(AutogradContext* ctx, int64_t mode, const Tensor& x,
                               const Tensor& h0, const optional<Tensor>& c0, const Tensor& w_ih,
                               const Tensor& w_hh, const optional<Tensor>& b_ih,
                               const optional<Tensor>& b_hh) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto [y, h1, c1, saved] =
        run_forward(mode, x, h0, get(c0), w_ih, w_hh, get(b_ih), get(b_hh), true);
    variable_list keep = {x, h0, get(c0), w_ih, w_hh, get(b_ih), get(b_hh)};
    keep.insert(keep.end(), saved.begin(), saved.end());
    ctx->save_for_backward(keep);
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["spent"] = false;
    ctx->set_materialize_grads(false);
    if (mode == cpu::kLSTM) return {h1, c1};
    return {h1};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool create_graph = torch::autograd::GradMode::is_enabled();
    variable_list out;
    {
      at::NoGradGuard no_grad;
      c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
      out = run_backward(ctx, grads);
    }
    bool grads_require_grad = false;
    for (const Tensor& g : grads) grads_require_grad |= g.defined() && g.requires_grad();
    if (!create_graph || !grads_require_grad) return out;
    // As @once_differentiable: gradients with a history whose backward raises.
    variable_list fake;
    for (const Tensor& t : out) fake.push_back(t.defined() ? t.detach().requires_grad_(true) : t);
    return torch::autograd::DelayedError(
               "fused_rnn: trying to differentiate twice a cell step (its backward is not "
               "differentiable, as torch.nn's cuDNN RNNs)",
               static_cast<int64_t>(fake.size()))
        .apply(std::move(fake));
  }

  static variable_list run_backward(AutogradContext* ctx, const variable_list& grads) {
    const int64_t mode = ctx->saved_data["mode"].toInt();
    const variable_list v = ctx->get_saved_variables();
    const Tensor &x = v[0], &h0 = v[1], &c0 = v[2], &w_ih = v[3], &w_hh = v[4], &b_ih = v[5],
                 &b_hh = v[6];
    std::vector<Tensor> saved(v.begin() + kInputs, v.end());
    // The last backward wrote its gate gradients over the saved activations.
    if (ctx->saved_data["spent"].toBool()) {
      saved = std::get<3>(run_forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, true));
    }
    ctx->saved_data["spent"] = true;
    const Tensor& dh1 = grads[0];
    const Tensor dc1 = grads.size() > 1 ? grads[1] : Tensor();
    // For one step the output y is h1: its gradient goes in as dy, no dh_n.
    const Tensor dy = dh1.defined() ? dh1.unsqueeze(0) : at::zeros({1, h0.size(0), h0.size(1)},
                                                                   h0.options());
    std::vector<Tensor> g = recurrence_backward(mode, false, x.unsqueeze(0), h0, opt(c0),
                                                c10::nullopt, w_ih, w_hh, opt(b_ih), opt(b_hh),
                                                c10::nullopt, saved, dy, c10::nullopt, opt(dc1));
    const auto if_defined = [](const Tensor& like, const Tensor& grad) {
      return like.defined() ? grad : Tensor();
    };
    // One gradient per argument of forward: none for mode.
    return {Tensor(), g[0].squeeze(0), g[1], if_defined(c0, g[2]), g[3], g[4],
            if_defined(b_ih, g[5]), if_defined(b_hh, g[6])};
  }
};

// (h1) or (h1, c1) for LSTM. Records the step for autograd only where a gradient is needed.
std::vector<Tensor> cell_step(int64_t mode, const Tensor& x, const Tensor& h0,
                              const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
                              const optional<Tensor>& b_ih, const optional<Tensor>& b_hh) {
  TORCH_CHECK(x.dim() == 2, "fused_rnn: cell_step: x must be 2-D [batch, input_size], got ",
              x.dim(), "-D");
  const Tensor c = get(c0), bi = get(b_ih), bh = get(b_hh);
  bool needs_grad = false;
  for (const Tensor* t : {&x, &h0, &c, &w_ih, &w_hh, &bi, &bh}) {
    needs_grad |= t->defined() && t->requires_grad();
  }
  if (torch::autograd::GradMode::is_enabled() && needs_grad) {
    return CellStep::apply(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh);
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  auto [y, h1, c1, saved] = run_forward(mode, x, h0, c, w_ih, w_hh, bi, bh, false);
  if (mode == cpu::kLSTM) return {h1, c1};
  return {h1};
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def("cell_step(int mode, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh) -> Tensor[]");
}

// Composite: the kernel itself records the step for autograd (CellStep::apply).
TORCH_LIBRARY_IMPL(fused_rnn, CompositeImplicitAutograd, m) {
  m.impl("cell_step", &fused_rnn::cell_step);
}
