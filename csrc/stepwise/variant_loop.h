// The time loops of the cuda backend's variant recurrences (LayerNorm LSTM/GRU, zoneout;
// variant_row.cuh's header comment): per step one GEMM through ATen (cuBLAS on CUDA) and
// the fused row step; what spans all steps (the input side and its layer norm, the weight
// gradients) through ATen before and after the loop. One layer, one direction.
//
// `Rows` runs the row steps: the CUDA launchers (variant_launch.h) or, on CPU tensors, the
// same row bodies on host threads (csrc/bindings/stepwise_variants.cpp).
//
// Saved for backward (per-step tensors in loop order, A = the accumulation dtype):
//   acts [T, B, 4H], hs [T+1, B, H];
//   LSTM: cs [T+1, B, H] (A), ct [T, B, H] (A: LN(c~) with layer norm, else c~);
//   layer norm: gh_hat [T, B, G*H], gh_rstd [T, B] (A), LSTM c_rstd [T, B] (A), and the input
//   side in natural order: gx = x W_ih^T [T, B, G*H], its mean and 1/sigma [T, B] (A).
// Backward writes the LSTM gate gradients over acts.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "../common/variant_weights.h"
#include "fused_rnn/variant_row.cuh"
#include "recurrence_loop.h"  // ptr, natural_rows

namespace fused_rnn {
namespace stepwise {

// The per-step parts of `saved` at loop step t (nullptr where absent).
template <typename T, typename A>
cuda::VariantSaved<T, A> saved_slot(int64_t t, const Tensor& acts, const Tensor& gh_hat,
                                    const Tensor& gh_rstd, const Tensor& ct, const Tensor& c_rstd) {
  const auto at_t = [t](const Tensor& s) { return s.defined() ? s[t] : Tensor(); };
  return {ptr<T>(at_t(acts)), ptr<T>(at_t(gh_hat)), ptr<A>(at_t(gh_rstd)), ptr<A>(at_t(ct)),
          ptr<A>(at_t(c_rstd))};
}

// x [T, B, I]; h0 [B, H]; c0 [B, H] or undefined; lengths [B] int64 on x's device or
// undefined; keep_h, keep_c [T, B, H] or undefined. Returns (y, h_n, c_n or [0], saved).
template <typename T, typename A, typename Rows>
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> variant_forward(
    int mode, bool reverse, const Tensor& x, const Tensor& h0, const Tensor& c0,
    const Tensor& lengths, const VariantWeightTensors& w, const Tensor& keep_h, const Tensor& keep_c,
    bool need_saved, const Rows& rows) {
  const int64_t nT = x.size(0), B = x.size(1), I = x.size(2), GH = w.w_ih.size(0);
  const int64_t H = w.w_hh.size(1);
  const bool lstm = mode == cuda::kLSTM, ln = w.layer_norm();
  const auto opts = x.options();
  const auto acc = opts.dtype(c10::CppTypeToScalarType<A>::value);

  // The input side of every step: ln_ih LN(x W_ih^T) + b_ih, or x W_ih^T + b_ih.
  const Tensor x2 = x.reshape({nT * B, I});
  Tensor gx, gx_mean, gx_rstd, gi;
  if (ln) {
    gx = at::mm(x2, w.w_ih.t());
    std::tie(gi, gx_mean, gx_rstd) =
        at::native_layer_norm(gx, {GH}, w.ln_ih, w.b_ih, cuda::kLayerNormEps);
  } else {
    gi = w.b_ih.defined() ? at::addmm(w.b_ih, x2, w.w_ih.t()) : at::mm(x2, w.w_ih.t());
  }

  const int64_t S = need_saved ? nT + 1 : 2;  // all states, or ping-pong
  Tensor hs = at::empty({S, B, H}, opts), cs;
  hs[0].copy_(h0);
  if (lstm) {
    cs = at::empty({S, B, H}, acc);
    cs[0].copy_(c0);
  }
  const auto saved_as = [&](at::IntArrayRef sizes, const at::TensorOptions& o, bool want) {
    return need_saved && want ? at::empty(sizes, o) : Tensor();
  };
  const Tensor acts = saved_as({nT, B, 4 * H}, opts, true);
  const Tensor ct = saved_as({nT, B, H}, acc, lstm);
  const Tensor gh_hat = saved_as({nT, B, GH}, opts, ln), gh_rstd = saved_as({nT, B}, acc, ln);
  const Tensor c_rstd = saved_as({nT, B}, acc, ln && lstm);
  Tensor y = at::empty({nT, B, H}, opts);
  Tensor gh = at::empty({B, GH}, opts);
  const Tensor w_hh_t = w.w_hh.t();
  const cuda::StepShape shape{nT, B, H, H, 0, reverse, ptr<const int64_t>(lengths)};

  for (int64_t t = 0; t < nT; ++t) {
    const int64_t sp = need_saved ? t : t % 2, sn = need_saved ? t + 1 : (t + 1) % 2;
    at::mm_out(gh, hs[sp], w_hh_t);
    cuda::VariantFwdArgs<T, A> a{};
    a.s = shape;
    a.s.t = t;
    a.gi = ptr<T>(gi);
    a.gh = ptr<T>(gh);
    a.b_hh = ptr<T>(w.b_hh);
    a.ln_hh = ptr<T>(w.ln_hh);
    a.ln_c_weight = ptr<T>(w.ln_cw);
    a.ln_c_bias = ptr<T>(w.ln_cb);
    a.keep_h = ptr<T>(keep_h);
    a.keep_c = ptr<T>(keep_c);
    a.h_prev = ptr<T>(hs[sp]);
    a.h_new = ptr<T>(hs[sn]);
    a.c_prev = lstm ? ptr<A>(cs[sp]) : nullptr;
    a.c_new = lstm ? ptr<A>(cs[sn]) : nullptr;
    a.y = ptr<T>(y);
    if (need_saved) a.saved = saved_slot<T, A>(t, acts, gh_hat, gh_rstd, ct, c_rstd);
    rows.fwd(mode, a);
  }
  const int64_t last = need_saved ? nT : nT % 2;
  Tensor h_n = hs[last].clone();
  Tensor c_n = lstm ? cs[last].to(x.scalar_type(), false, /*copy=*/true) : at::empty({0}, opts);
  std::vector<Tensor> saved;
  if (need_saved) {
    saved = {acts, hs};
    if (lstm) saved.insert(saved.end(), {cs, ct});
    if (ln) {
      saved.insert(saved.end(), {gh_hat, gh_rstd});
      if (lstm) saved.push_back(c_rstd);
      saved.insert(saved.end(), {gx.view({nT, B, GH}), gx_mean.view({nT, B}), gx_rstd.view({nT, B})});
    }
  }
  return {y, h_n, c_n, saved};
}

// The reverse loop, then the input side's norm backward and the weight gradients, one op
// each over all steps. lengths as forward's; lengths_cpu the same on the CPU (the row order
// of dx). Returns [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh, dln_c_weight,
// dln_c_bias], [0] where absent.
template <typename T, typename A, typename Rows>
std::vector<Tensor> variant_backward(int mode, bool reverse, const Tensor& x, const Tensor& lengths,
                                     const Tensor& lengths_cpu, const VariantWeightTensors& w,
                                     const Tensor& keep_h, const Tensor& keep_c,
                                     const std::vector<Tensor>& saved, const Tensor& dy,
                                     const Tensor& dh_n, const Tensor& dc_n, const Rows& rows) {
  const int64_t nT = x.size(0), B = x.size(1), I = x.size(2), GH = w.w_ih.size(0);
  const int64_t H = w.w_hh.size(1), TB = nT * B;
  const bool lstm = mode == cuda::kLSTM, ln = w.layer_norm(), bias = w.b_ih.defined();
  const auto opts = x.options();
  const at::ScalarType acc_type = c10::CppTypeToScalarType<A>::value;
  const auto acc = opts.dtype(acc_type);
  const Tensor none = at::empty({0}, opts);

  size_t n = 0;
  const Tensor acts = saved[n++], hs = saved[n++];
  const Tensor cs = lstm ? saved[n++] : Tensor(), ct = lstm ? saved[n++] : Tensor();
  const Tensor gh_hat = ln ? saved[n++] : Tensor(), gh_rstd = ln ? saved[n++] : Tensor();
  const Tensor c_rstd = ln && lstm ? saved[n++] : Tensor();
  const Tensor gx = ln ? saved[n++] : Tensor(), gx_mean = ln ? saved[n++] : Tensor();
  const Tensor gx_rstd = ln ? saved[n++] : Tensor();

  Tensor dh = dh_n.defined() ? dh_n.to(acc_type, false, true).contiguous() : at::zeros({B, H}, acc);
  Tensor dc;
  if (lstm) dc = dc_n.defined() ? dc_n.to(acc_type, false, true).contiguous() : at::zeros({B, H}, acc);
  const Tensor da = lstm ? acts : at::empty({nT, B, GH}, opts);
  const Tensor dah = lstm ? da : at::empty({nT, B, GH}, opts);
  const Tensor dgh = ln ? at::empty({nT, B, GH}, opts) : dah;
  const Tensor dhc = ln && lstm ? at::empty({nT, B, H}, acc) : Tensor();
  Tensor dh_rec = at::empty({B, H}, opts);
  const cuda::StepShape shape{nT, B, H, H, 0, reverse, ptr<const int64_t>(lengths)};

  for (int64_t t = nT - 1; t >= 0; --t) {
    const bool last = t == nT - 1;
    if (!last) at::mm_out(dh_rec, dgh[t + 1], w.w_hh);
    cuda::VariantBwdArgs<T, A> a{};
    a.s = shape;
    a.s.t = t;
    a.dy = ptr<T>(dy);
    a.dh_rec = last ? nullptr : ptr<T>(dh_rec);
    a.dh = ptr<A>(dh);
    a.dc = ptr<A>(dc);
    a.ln_hh = ptr<T>(w.ln_hh);
    a.ln_c_weight = ptr<T>(w.ln_cw);
    a.ln_c_bias = ptr<T>(w.ln_cb);
    a.keep_h = ptr<T>(keep_h);
    a.keep_c = ptr<T>(keep_c);
    a.c_prev = lstm ? ptr<A>(cs[t]) : nullptr;
    a.h_prev = ptr<T>(hs[t]);
    a.saved = saved_slot<T, A>(t, acts, gh_hat, gh_rstd, ct, c_rstd);
    a.da = ptr<T>(da[t]);
    a.dah = lstm ? nullptr : ptr<T>(dah[t]);
    a.dgh = ln ? ptr<T>(dgh[t]) : nullptr;
    a.dhc = ln && lstm ? ptr<A>(dhc[t]) : nullptr;
    rows.bwd(mode, a);
  }
  const Tensor dh0 = (dh + at::mm(dgh[0], w.w_hh).to(acc_type)).to(x.scalar_type());
  const Tensor dc0 = lstm ? dc.to(x.scalar_type()) : none;

  // The input side over all steps, in loop order; `order` maps to natural order and back.
  const Tensor order = natural_rows(shape, lengths_cpu, x.device());
  const auto loop_order = [&](const Tensor& t) { return order.defined() ? t.index_select(0, order) : t; };
  const Tensor D = da.view({TB, GH});
  Tensor dxw = D, dln_ih = none, db_ih = bias ? D.sum(0) : none;
  if (ln) {
    const auto r = at::native_layer_norm_backward(
        D, loop_order(gx.view({TB, GH})), {GH}, loop_order(gx_mean.reshape({TB, 1})),
        loop_order(gx_rstd.reshape({TB, 1})), w.ln_ih, w.b_ih, {true, true, bias});
    dxw = std::get<0>(r);
    dln_ih = std::get<1>(r);
    if (bias) db_ih = std::get<2>(r);
  }
  const Tensor dx = loop_order(at::mm(dxw, w.w_ih));
  const Tensor dw_ih = at::mm(dxw.t(), loop_order(x.reshape({TB, I})));
  const Tensor dw_hh = at::mm(dgh.view({TB, GH}).t(), hs.narrow(0, 0, nT).reshape({TB, H}));
  const Tensor Dh = dah.view({TB, GH});
  const Tensor db_hh = bias ? Dh.sum(0) : none;
  const Tensor dln_hh = ln ? (Dh * gh_hat.view({TB, GH})).sum(0) : none;
  const Tensor dln_c_weight = dhc.defined() ? (dhc * ct).sum({0, 1}).to(x.scalar_type()) : none;
  const Tensor dln_c_bias = dhc.defined() ? dhc.sum({0, 1}).to(x.scalar_type()) : none;
  return {dx.view({nT, B, I}), dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh,
          dln_c_weight, dln_c_bias};
}

}  // namespace stepwise
}  // namespace fused_rnn
