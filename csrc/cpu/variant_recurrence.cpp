// Time loops of the variant recurrences on CPU (see variant_recurrence.h).
//
// Forward: x W_ih^T of all steps as one GEMM (with layer norm, then LN of every row at once);
// per step the recurrent GEMM h W_hh^T into a [B, G*H] buffer (MKL's packed GEMM for
// float) and one fused row pass (variant_kernels.h). Backward: per step, in reverse, one
// fused row pass that also does the LN backward of c~, of the recurrent row and of the input
// row, then dh += dR W_hh; the per-row terms of the gain and bias gradients are summed per
// step into running sums, each column by one thread and in a fixed order (the result does
// not depend on the thread count); after the loop dx, dW_ih and dW_hh are one GEMM each.
#include "variant_recurrence.h"

#include <algorithm>

#include "kernels.h"
#include "sequence_buffers.h"
#include "step_gemm.h"
#include "variant_kernels.h"

namespace fused_rnn {
namespace cpu {
namespace {

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

at::Tensor none_like(const at::Tensor& x) { return at::empty({0}, x.options()); }

// Batch rows per thread hand-off: a few thousand elements of row work at least.
int64_t row_grain(int64_t row_elems) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(1, row_elems)); }

struct Sizes {
  int64_t T, B, I, G, H;
  bool lstm, ln;
  int64_t p_ld;  // row stride of the input-side slots
};

Sizes sizes_of(int64_t mode, const at::Tensor& x, const VariantWeightTensors& w) {
  Sizes s;
  s.T = x.size(0);
  s.B = x.size(1);
  s.I = x.size(2);
  s.lstm = mode == kLSTM;
  s.G = s.lstm ? 4 : 3;
  s.H = w.w_ih.size(0) / s.G;
  s.ln = w.ln_ih.defined();
  s.p_ld = s.lstm || !s.ln ? 4 * s.H : 3 * s.H;
  return s;
}

// b_ih + b_hh folded into one vector (GRU: b_hn apart, inside the reset product).
std::pair<at::Tensor, at::Tensor> fold_biases(const Sizes& s, const VariantWeightTensors& w) {
  if (!w.b_ih.defined()) return {};
  if (s.lstm) return {(w.b_ih + w.b_hh).contiguous(), at::Tensor()};
  at::Tensor bias = w.b_ih.clone();
  bias.narrow(0, 0, 2 * s.H).add_(w.b_hh.narrow(0, 0, 2 * s.H));
  return {bias, w.b_hh.narrow(0, 2 * s.H, s.H).contiguous()};
}

template <typename T>
VariantParams<T> params(const Sizes& s, bool reverse, const at::Tensor& lengths,
                        const VariantWeightTensors& w, const at::Tensor& bias,
                        const at::Tensor& b_hn, const at::Tensor& keep_h, const at::Tensor& keep_c) {
  VariantParams<T> p;
  p.s = StepShape{s.T, s.B, s.H, s.H, 0, reverse, ptr<int64_t>(lengths)};
  p.lstm = s.lstm;
  p.ln = s.ln;
  p.p_ld = s.p_ld;
  p.bias = ptr<T>(bias);
  p.b_hn = ptr<T>(b_hn);
  p.ln_ih = ptr<T>(w.ln_ih);
  p.ln_hh = ptr<T>(w.ln_hh);
  p.ln_cw = ptr<T>(w.ln_cw);
  p.ln_cb = ptr<T>(w.ln_cb);
  p.keep_h = ptr<T>(keep_h);
  p.keep_c = s.lstm ? ptr<T>(keep_c) : nullptr;
  return p;
}

// ---------------------------------------------------------------- forward

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> forward_impl(
    int64_t mode, bool reverse, const at::Tensor& x_, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const VariantWeightTensors& w, const at::Tensor& keep_h,
    const at::Tensor& keep_c, bool need_saved) {
  const Sizes s = sizes_of(mode, x_, w);
  const int64_t nT = s.T, B = s.B, H = s.H, GH = s.G * H;
  const auto opts = x_.options();
  const at::Tensor x2 = x_.contiguous().view({nT * B, s.I});
  const VariantKernels<T>& k = variant_kernels<T>();

  // The input-side slots: x W_ih^T of all steps (GRU without LN: in the first 3H of 4H).
  at::Tensor P = sequence_buffer({nT, B, s.p_ld}, opts);
  at::Tensor P2 = P.view({nT * B, s.p_ld});
  at::Tensor P_in = P2.narrow(1, 0, GH);  // BLAS writes it in place (row stride p_ld)
  at::mm_out(P_in, x2, w.w_ih.t());
  at::Tensor rstd_p, rn, rstd_r;
  if (s.ln) {
    rstd_p = at::empty({nT, B}, opts);
    T* pp = P.data_ptr<T>();
    T* rs = rstd_p.data_ptr<T>();
    at::parallel_for(0, nT * B, row_grain(GH), [&](int64_t r0, int64_t r1) { k.ln_rows(pp, GH, rs, r0, r1); });
    if (need_saved) {
      rn = sequence_buffer({nT, B, GH}, opts);
      rstd_r = at::empty({nT, B}, opts);
    }
  }
  at::Tensor bias, b_hn;
  std::tie(bias, b_hn) = fold_biases(s, w);

  at::Tensor h = h0.contiguous().clone();
  at::Tensor c = s.lstm ? c0.contiguous().clone() : at::Tensor();
  at::Tensor y = sequence_buffer({nT, B, H}, opts);
  const bool states_in_y = !lengths.defined();
  at::Tensor hs = need_saved && !states_in_y ? sequence_buffer({nT, B, H}, opts) : at::Tensor();
  at::Tensor cs = need_saved && s.lstm ? sequence_buffer({nT, B, H}, opts) : at::Tensor();
  at::Tensor r = at::empty({B, GH}, opts);
  const StepGemm<T> gemm(w.w_hh, /*transpose=*/true, B);  // r = h W_hh^T

  VariantFwd<T> a;
  a.w = params<T>(s, reverse, lengths, w, bias, b_hn, keep_h, keep_c);
  a.r = r.data_ptr<T>();
  a.p = P.data_ptr<T>();
  a.save = need_saved;
  a.rn = ptr<T>(rn);
  a.rstd_r = ptr<T>(rstd_r);
  a.h = h.data_ptr<T>();
  a.c = ptr<T>(c);
  a.y = y.data_ptr<T>();
  a.h_save = ptr<T>(hs);
  a.c_save = ptr<T>(cs);
  const int64_t grain = row_grain(GH);
  for (int64_t t = 0; t < nT; ++t) {
    gemm.run(h, r, /*accumulate=*/false);
    a.w.s.t = t;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) { k.fwd_rows(a, b0, b1); });
  }

  std::vector<at::Tensor> saved;
  if (need_saved) {
    saved.push_back(P);
    if (s.ln) {
      saved.push_back(rstd_p);
      saved.push_back(rn);
      saved.push_back(rstd_r);
    }
    if (s.lstm) saved.push_back(cs);
    saved.push_back(states_in_y ? y : hs);
  }
  return {y, h, s.lstm ? c : none_like(x_), saved};
}

// ---------------------------------------------------------------- backward

// out = D^T [state before each slot's step] for D [T*B, n] (slots as variant_kernels.h):
// one GEMM over a saved hs, or two around y's ends when the states are y and h0.
void state_product(at::Tensor out, const at::Tensor& D, const at::Tensor& states, bool in_y,
                   bool reverse, const at::Tensor& h0, int64_t nT, int64_t B) {
  const int64_t H = states.size(-1);
  if (!in_y) {
    at::mm_out(out, D.t(), states.view({nT * B, H}));
    return;
  }
  // Forward: slot p's state is y[p - 1] (h0 at p = 0); reverse: y[p + 1] (h0 at p = T - 1).
  const int64_t h0_slot = reverse ? nT - 1 : 0, first = reverse ? 0 : 1;
  at::mm_out(out, D.narrow(0, h0_slot * B, B).t(), h0);
  if (nT > 1) {
    out.addmm_(D.narrow(0, first * B, (nT - 1) * B).t(),
               states.narrow(0, 1 - first, nT - 1).reshape({(nT - 1) * B, H}));
  }
}

template <typename T>
std::vector<at::Tensor> backward_impl(
    int64_t mode, bool reverse, const at::Tensor& x_, const at::Tensor& h0_, const at::Tensor& c0,
    const at::Tensor& lengths, const VariantWeightTensors& w, const at::Tensor& keep_h,
    const at::Tensor& keep_c, const std::vector<at::Tensor>& saved, const at::Tensor& dy_,
    const at::Tensor& dh_n, const at::Tensor& dc_n) {
  const Sizes s = sizes_of(mode, x_, w);
  const int64_t nT = s.T, B = s.B, H = s.H, GH = s.G * H;
  const auto opts = x_.options();
  const at::Tensor x2 = x_.contiguous().view({nT * B, s.I});
  const at::Tensor dy = contiguous_sequence(dy_), h0 = h0_.contiguous();
  const VariantKernels<T>& k = variant_kernels<T>();

  size_t n = 0;
  const at::Tensor P = saved[n++];
  const at::Tensor rstd_p = s.ln ? saved[n++] : at::Tensor();
  const at::Tensor rn = s.ln ? saved[n++] : at::Tensor();
  const at::Tensor rstd_r = s.ln ? saved[n++] : at::Tensor();
  const at::Tensor cs = s.lstm ? saved[n++] : at::Tensor();
  const at::Tensor states = saved[n++];
  const bool in_y = !lengths.defined();

  at::Tensor bias, b_hn;
  std::tie(bias, b_hn) = fold_biases(s, w);
  at::Tensor dh = dh_n.defined() ? dh_n.contiguous().clone() : at::zeros({B, H}, opts);
  at::Tensor dc;
  if (s.lstm) dc = dc_n.defined() ? dc_n.contiguous().clone() : at::zeros({B, H}, opts);
  at::Tensor dr = at::empty({B, GH}, opts);
  const int64_t NR = reduce_count(s.lstm, s.ln, H);
  at::Tensor red = at::empty({B, NR}, opts);
  at::Tensor acc = at::zeros({NR}, opts);
  const StepGemm<T> gemm(w.w_hh, /*transpose=*/false, B);  // dh += dr W_hh

  VariantBwd<T> a;
  a.w = params<T>(s, reverse, lengths, w, bias, b_hn, keep_h, keep_c);
  a.dy = dy.data_ptr<T>();
  a.dh = dh.data_ptr<T>();
  a.dc = ptr<T>(dc);
  a.p = P.data_ptr<T>();
  a.rstd_p = ptr<T>(rstd_p);
  a.rn = ptr<T>(rn);
  a.rstd_r = ptr<T>(rstd_r);
  a.hs = states.data_ptr<T>();
  a.hs_shift = in_y ? (reverse ? 1 : -1) : 0;
  a.h0 = h0.data_ptr<T>();
  a.c_save = ptr<T>(cs);
  a.dr = dr.data_ptr<T>();
  a.red = red.data_ptr<T>();
  const T* red_p = red.data_ptr<T>();
  T* acc_p = acc.data_ptr<T>();
  const int64_t grain = row_grain(GH);
  for (int64_t t = nT - 1; t >= 0; --t) {
    a.w.s.t = t;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) { k.bwd_rows(a, b0, b1); });
    gemm.run(dr, dh, /*accumulate=*/true);
    at::parallel_for(0, NR, std::max<int64_t>(64, 8192 / std::max<int64_t>(1, B)),
                     [&](int64_t c0_, int64_t c1_) { k.col_sum(red_p, B, NR, acc_p, c0_, c1_); });
  }

  // Slots now hold gradients: the input side for dx and dW_ih, the hidden side for dW_hh.
  const at::Tensor P2 = P.view({nT * B, s.p_ld});
  const at::Tensor d_in = P2.narrow(1, 0, GH);
  at::Tensor dx = sequence_buffer({nT, B, s.I}, opts);
  at::Tensor dx_rows = dx.view({nT * B, s.I});
  at::mm_out(dx_rows, d_in, w.w_ih);
  at::Tensor dw_ih = at::mm(d_in.t(), x2);
  at::Tensor dw_hh = at::empty({GH, H}, opts);
  if (s.ln) {
    state_product(dw_hh, rn.view({nT * B, GH}), states, in_y, reverse, h0, nT, B);
  } else if (s.lstm) {
    state_product(dw_hh, d_in, states, in_y, reverse, h0, nT, B);
  } else {  // GRU slots [da_r, da_z, da_n, da_n*r]: the hidden side skips da_n
    state_product(dw_hh.narrow(0, 0, 2 * H), P2.narrow(1, 0, 2 * H), states, in_y, reverse, h0, nT, B);
    state_product(dw_hh.narrow(0, 2 * H, H), P2.narrow(1, 3 * H, H), states, in_y, reverse, h0, nT, B);
  }
  const at::Tensor none = none_like(x_);
  at::Tensor db_ih = none, db_hh = none, dln_ih = none, dln_hh = none, dln_cw = none, dln_cb = none;
  if (w.b_ih.defined()) {
    db_ih = acc.narrow(0, 0, GH).clone();
    db_hh = s.lstm ? db_ih.clone() : at::cat({acc.narrow(0, 0, 2 * H), acc.narrow(0, 3 * H, H)});
  }
  if (s.ln) {
    const int64_t off = s.lstm ? GH : 4 * H;  // after [da] (LSTM) or [da_r, da_z, da_n, da_n*r]
    dln_ih = acc.narrow(0, off, GH).clone();
    dln_hh = acc.narrow(0, off + GH, GH).clone();
    if (s.lstm) {
      dln_cw = acc.narrow(0, 12 * H, H).clone();
      dln_cb = acc.narrow(0, 13 * H, H).clone();
    }
  }
  return {dx, dh, s.lstm ? dc : none, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh, dln_cw, dln_cb};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> variant_forward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const VariantWeightTensors& w, const at::Tensor& keep_h,
    const at::Tensor& keep_c, bool need_saved) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rnn::variant_forward", [&] {
    return forward_impl<scalar_t>(mode, reverse, x, h0, c0, lengths, w, keep_h, keep_c, need_saved);
  });
}

std::vector<at::Tensor> variant_backward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const VariantWeightTensors& w, const at::Tensor& keep_h,
    const at::Tensor& keep_c, const std::vector<at::Tensor>& saved, const at::Tensor& dy,
    const at::Tensor& dh_n, const at::Tensor& dc_n) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rnn::variant_backward", [&] {
    return backward_impl<scalar_t>(mode, reverse, x, h0, c0, lengths, w, keep_h, keep_c, saved,
                                   dy, dh_n, dc_n);
  });
}

}  // namespace cpu
}  // namespace fused_rnn
