// The time loops of the stepwise recurrence (the cuda backend's, recurrence_step.cuh's
// header comment): per step one GEMM through ATen (cuBLAS on CUDA) and the fused pointwise
// step; the GEMMs over all steps before and after the loop. One layer, one direction.
// Where the plan (sequence_plan.h) says so, the whole loop is one whole-sequence launch
// instead: single-block (recurrence_sequence.cuh, tiles of plan.rows batch rows) or
// multi-block (recurrence_grid.cuh, plan.units hidden units a block); the GEMMs around it and
// the saved layout are the same.
//
// `Points` runs the pointwise steps: the CUDA launchers (recurrence_launch.h) or, on CPU
// tensors, the same per-element functions on host threads; likewise the whole-sequence tiles
// and blocks.
// The loops are thus tested on a machine without a GPU exactly as they drive the kernels, bar
// the launch itself.
//
// Saved for backward: LSTM [acts [T, B, 4H], hs [T+1, B, P], cs [T+1, B, H] (accumulation
// dtype)(, y_pre [T, B, H] with a projection)]; GRU [acts, hs]; RNN [hs]. Backward writes the
// LSTM gate gradients over acts.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <tuple>
#include <vector>

#include "../common/tensor_ptr.h"
#include "fused_rnn/recurrence_sequence.cuh"
#include "fused_rnn/recurrence_step.cuh"
#include "sequence_plan.h"

namespace fused_rnn {
namespace stepwise {

using at::Tensor;
using cuda::StepShape;

// The sizes of a layer: T steps, B rows, G*H gates, H units, P state size.
struct Sizes {
  int64_t T, B, GH, H, P;
  bool lstm, gru, proj;
  Sizes(int mode, const Tensor& x, const Tensor& w_ih, const Tensor& w_hr)
      : T(x.size(0)), B(x.size(1)), GH(w_ih.size(0)), H(GH / cuda::gate_count(mode)),
        P(w_hr.defined() ? w_hr.size(0) : H), lstm(mode == cuda::kLSTM), gru(mode == cuda::kGRU),
        proj(w_hr.defined()) {}
};

// Loop-order row (t, b) -> natural-order row: pos(t, b) * B + b, on `device`; undefined
// when the two orders agree (forward in time). pos is its own inverse, so the same index
// gathers either way.
inline Tensor natural_rows(const StepShape& shape, const Tensor& lengths_cpu, at::Device device) {
  if (!shape.reverse) return Tensor();
  StepShape s = shape;
  s.lengths = lengths_cpu.defined() ? lengths_cpu.data_ptr<int64_t>() : nullptr;
  Tensor idx = at::empty({s.steps * s.B}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = idx.data_ptr<int64_t>();
  for (s.t = 0; s.t < s.steps; ++s.t) {
    for (int64_t b = 0; b < s.B; ++b) p[s.t * s.B + b] = s.pos(b) * s.B + b;
  }
  return idx.to(device);
}

// x [T, B, I]; h0 [B, P]; c0 [B, H] or undefined; lengths: [B] int64 on x's device (what
// the kernels read) or undefined; weights contiguous; plan: the per-step loop or a
// whole-sequence path (no projection). Returns (y, h_n, c_n or [0], saved).
template <typename T, typename A, typename Points>
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> forward(
    int mode, bool reverse, const Tensor& x, const Tensor& h0, const Tensor& c0,
    const Tensor& lengths, const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih,
    const Tensor& b_hh, const Tensor& w_hr, bool need_saved, const SequencePlan& plan,
    const Points& points) {
  const Sizes z(mode, x, w_ih, w_hr);
  const int64_t nT = z.T, B = z.B, GH = z.GH, H = z.H, P = z.P;
  const bool lstm = z.lstm, gru = z.gru, proj = z.proj;
  const auto opts = x.options();
  const at::ScalarType acc_type = c10::CppTypeToScalarType<A>::value;
  const auto acc = opts.dtype(acc_type);

  const Tensor gx = at::matmul(x, w_ih.t()).contiguous();  // [T, B, G*H]
  const int64_t S = need_saved ? nT + 1 : 2;                // all states, or ping-pong
  Tensor hs = at::empty({S, B, P}, opts), cs;
  hs[0].copy_(h0);
  if (lstm) {
    cs = at::empty({S, B, H}, acc);
    cs[0].copy_(c0);
  }
  const Tensor acts = need_saved && (lstm || gru) ? at::empty({nT, B, 4 * H}, opts) : Tensor();
  const Tensor ypre = proj ? at::empty({need_saved ? nT : 1, B, H}, opts) : Tensor();
  Tensor y = at::empty({nT, B, P}, opts);
  TORCH_CHECK(plan.per_step() || !proj, "fused_rnn: the whole-sequence recurrence has no projection");
  if (!plan.per_step()) {
    cuda::SeqFwdArgs<T, A> a{};
    a.s = cuda::SeqShape{nT, B, H, plan.rows, reverse, ptr<const int64_t>(lengths)};
    a.gx = ptr<T>(gx);
    a.w_hh = ptr<T>(w_hh);
    a.b_ih = ptr<T>(b_ih);
    a.b_hh = ptr<T>(b_hh);
    a.hs = ptr<T>(hs);
    a.cs = lstm ? ptr<A>(cs) : nullptr;
    a.y = ptr<T>(y);
    a.acts = ptr<T>(acts);
    a.all_states = need_saved;
    if (plan.grid()) {
      points.grid_fwd(mode, a, plan.units);
    } else {
      points.sequence_fwd(mode, a);
    }
  }
  Tensor gh = plan.per_step() ? at::empty({B, GH}, opts) : Tensor();
  const Tensor w_hh_t = w_hh.t(), w_hr_t = proj ? w_hr.t() : Tensor();
  const StepShape shape{nT, B, H, P, 0, reverse, ptr<const int64_t>(lengths)};

  const int64_t step_loop = plan.per_step() ? nT : 0;  // else the whole-sequence launch ran them all
  for (int64_t t = 0; t < step_loop; ++t) {
    const int64_t sp = need_saved ? t : t % 2, sn = need_saved ? t + 1 : (t + 1) % 2;
    const Tensor h_prev = hs[sp];
    Tensor h_next = hs[sn];
    at::mm_out(gh, h_prev, w_hh_t);
    cuda::FwdStepArgs<T, A> a{};
    a.s = shape;
    a.s.t = t;
    a.gx = ptr<T>(gx);
    a.gh = ptr<T>(gh);
    a.b_ih = ptr<T>(b_ih);
    a.b_hh = ptr<T>(b_hh);
    a.h_prev = ptr<T>(h_prev);
    Tensor h_new = proj ? ypre[need_saved ? t : 0] : h_next;
    a.h_new = ptr<T>(h_new);
    a.c_prev = lstm ? ptr<A>(cs[sp]) : nullptr;
    a.c_new = lstm ? ptr<A>(cs[sn]) : nullptr;
    a.y = proj ? nullptr : ptr<T>(y);
    a.acts = acts.defined() ? ptr<T>(acts[t]) : nullptr;
    a.proj = proj;
    points.fwd(mode, a);
    if (proj) {
      at::mm_out(h_next, h_new, w_hr_t);
      points.proj_fwd_post(cuda::ProjFwdPostArgs<T>{a.s, ptr<T>(h_prev), ptr<T>(h_next), ptr<T>(y)});
    }
  }
  const int64_t last = need_saved ? nT : nT % 2;
  Tensor h_n = hs[last].clone();
  Tensor c_n = lstm ? cs[last].to(x.scalar_type(), false, /*copy=*/true) : at::empty({0}, opts);
  std::vector<Tensor> saved;
  if (need_saved) {
    if (acts.defined()) saved.push_back(acts);
    saved.push_back(hs);
    if (lstm) saved.push_back(cs);
    if (proj) saved.push_back(ypre);
  }
  return {y, h_n, c_n, saved};
}

// The reverse loop (or the plan's whole-sequence backward), then dx and the
// weight gradients as one GEMM each. lengths as forward's; lengths_cpu the same on the CPU
// (the row order of dx). Returns [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr], [0]
// where absent.
template <typename T, typename A, typename Points>
std::vector<Tensor> backward(int mode, bool reverse, const Tensor& x, const Tensor& lengths,
                             const Tensor& lengths_cpu, const Tensor& w_ih, const Tensor& w_hh,
                             bool has_bias, const Tensor& w_hr, const std::vector<Tensor>& saved,
                             const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n,
                             const SequencePlan& plan, const Points& points) {
  const Sizes z(mode, x, w_ih, w_hr);
  const int64_t nT = z.T, B = z.B, I = x.size(2), GH = z.GH, H = z.H, P = z.P;
  const bool lstm = z.lstm, gru = z.gru, proj = z.proj;
  const auto opts = x.options();
  const at::ScalarType acc_type = c10::CppTypeToScalarType<A>::value;
  const auto acc = opts.dtype(acc_type);
  const Tensor none = at::empty({0}, opts);

  size_t n = 0;
  const Tensor acts = lstm || gru ? saved[n++] : Tensor();
  const Tensor hs = saved[n++];
  const Tensor cs = lstm ? saved[n++] : Tensor();
  const Tensor ypre = proj ? saved[n++] : Tensor();

  Tensor dh = dh_n.defined() ? dh_n.to(acc_type, false, true).contiguous() : at::zeros({B, P}, acc);
  Tensor dc;
  if (lstm) dc = dc_n.defined() ? dc_n.to(acc_type, false, true).contiguous() : at::zeros({B, H}, acc);
  // Gate gradients: LSTM over its saved activations; GRU apart from them, plus the hidden
  // side (da_r, da_z, da_n r), which W_hh meets; LSTM and RNN: the hidden side is da itself.
  const Tensor da = lstm ? acts : at::empty({nT, B, GH}, opts);
  const Tensor dah = gru ? at::empty({nT, B, GH}, opts) : da;
  Tensor dh_rec = plan.per_step() ? at::empty({B, P}, opts) : Tensor();
  Tensor gy = proj ? at::empty({B, H}, opts) : Tensor();
  const Tensor gs = proj ? at::empty({nT, B, P}, opts) : Tensor();
  const StepShape shape{nT, B, H, P, 0, reverse, ptr<const int64_t>(lengths)};
  TORCH_CHECK(plan.per_step() || !proj, "fused_rnn: the whole-sequence recurrence has no projection");
  if (!plan.per_step()) {
    cuda::SeqBwdArgs<T, A> a{};
    a.s = cuda::SeqShape{nT, B, H, plan.rows, reverse, ptr<const int64_t>(lengths)};
    a.w_hh = ptr<T>(w_hh);
    a.dy = ptr<T>(dy);
    a.dh = ptr<A>(dh);
    a.dc = ptr<A>(dc);
    a.acts = ptr<T>(acts);
    a.cs = ptr<A>(cs);
    a.hs = ptr<T>(hs);
    a.da = ptr<T>(da);
    a.da_h = gru ? ptr<T>(dah) : nullptr;
    if (plan.grid()) {
      points.grid_bwd(mode, a, plan.units);
    } else {
      points.sequence_bwd(mode, a);
    }
  }

  const int64_t step_loop = plan.per_step() ? nT : 0;  // as forward's
  for (int64_t t = step_loop - 1; t >= 0; --t) {
    const bool last = t == nT - 1;
    if (!last) at::mm_out(dh_rec, dah[t + 1], w_hh);
    cuda::BwdStepArgs<T, A> a{};
    a.s = shape;
    a.s.t = t;
    a.dy = ptr<T>(dy);
    a.dh_rec = last || proj ? nullptr : ptr<T>(dh_rec);
    a.dh = ptr<A>(dh);
    a.dc = ptr<A>(dc);
    if (proj) {
      const Tensor g = gs[t];
      points.proj_bwd_pre(cuda::ProjBwdPreArgs<T, A>{a.s, ptr<T>(dy), last ? nullptr : ptr<T>(dh_rec),
                                                     ptr<A>(dh), ptr<T>(g)});
      at::mm_out(gy, g, w_hr);
      a.gy = ptr<T>(gy);
    }
    a.acts = acts.defined() ? ptr<T>(acts[t]) : nullptr;
    a.c_prev = lstm ? ptr<A>(cs[t]) : nullptr;
    a.c_new = lstm ? ptr<A>(cs[t + 1]) : nullptr;
    a.h_prev = ptr<T>(hs[t]);
    a.h_new = ptr<T>(hs[t + 1]);
    a.da = ptr<T>(da[t]);
    a.da_h = gru ? ptr<T>(dah[t]) : nullptr;
    points.bwd(mode, a);
  }
  const Tensor dh0 = (dh + at::mm(dah[0], w_hh).to(acc_type)).to(x.scalar_type());
  const Tensor dc0 = lstm ? dc.to(x.scalar_type()) : none;

  const Tensor D = da.view({nT * B, GH}), Dh = dah.view({nT * B, GH});
  const Tensor order = natural_rows(shape, lengths_cpu, x.device());
  const Tensor x2 = x.reshape({nT * B, I});
  Tensor dx = at::mm(D, w_ih);
  if (order.defined()) dx = dx.index_select(0, order);
  const Tensor dw_ih = at::mm(D.t(), order.defined() ? x2.index_select(0, order) : x2);
  const Tensor dw_hh = at::mm(Dh.t(), hs.narrow(0, 0, nT).reshape({nT * B, P}));
  const Tensor db_ih = has_bias ? D.sum(0) : none, db_hh = has_bias ? Dh.sum(0) : none;
  const Tensor dw_hr = proj ? at::mm(gs.view({nT * B, P}).t(), ypre.view({nT * B, H})) : none;
  return {dx.view({nT, B, I}), dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr};
}

}  // namespace stepwise
}  // namespace fused_rnn
