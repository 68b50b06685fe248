// The fused attention op on CPU: allocation, threads and dispatch around the kernels of
// attention_kernels.h. Arguments are checked by the caller (csrc/bindings/attention.cpp).
#include "attention.h"

#include <c10/core/GradMode.h>

#include <limits>
#include <utility>
#include <vector>

#include "attention_kernels.h"

namespace fused_rnn {
namespace cpu {
namespace {

template <typename T>
AttnArgs<T> make_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals,
                      const at::Tensor& lengths, const at::Tensor& mask, const at::Tensor& v,
                      bool additive, double scale, const at::Tensor& lse) {
  AttnArgs<T> a;
  a.B = q.size(0);
  a.Tq = q.size(1);
  a.Tk = k.size(1);
  a.D = q.size(2);
  a.Dv = vals.size(2);
  a.additive = additive;
  a.scale = T(scale);
  a.lengths = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  a.mask = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  a.q = q.data_ptr<T>();
  a.k = k.data_ptr<T>();
  a.vals = vals.data_ptr<T>();
  a.v = additive ? v.data_ptr<T>() : nullptr;
  a.lse = lse.data_ptr<T>();
  return a;
}

// Query rows per task: enough score work to pay for the hand-off.
int64_t row_grain(int64_t Tk, int64_t D) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, Tk * D)); }

// Dot scores of several queries per batch go through GEMMs (the per-row kernel would do
// Tq x Tk dot products); one batch at a time, so the scores are [Tq, valid keys] of one
// batch, never [B, Tq, Tk]. Valid keys are gathered first: a masked key or value is never
// read, not even a NaN one.
bool use_gemm_path(bool additive, int64_t Tq) { return !additive && Tq >= 2; }

// Batch b's valid keys: a prefix of n keys (no mask: n = Tk, or its length), read in place;
// with a mask, the indices of the valid ones, gathered.
struct ValidKeys {
  int64_t n;
  at::Tensor idx;  // [n] int64 with a mask, else undefined
  ValidKeys(const at::Tensor& lengths, const at::Tensor& mask, int64_t b, int64_t Tk) {
    if (mask.defined()) {
      idx = mask[b].nonzero().view({-1});
      n = idx.numel();
    } else {
      n = lengths.defined() ? lengths.data_ptr<int64_t>()[b] : Tk;
    }
  }
  at::Tensor rows(const at::Tensor& t) const {  // t [Tk, D] -> [n, D]
    return idx.defined() ? t.index_select(0, idx) : t.narrow(0, 0, n);
  }
  at::Tensor cols(const at::Tensor& t) const {  // t [Tq, Tk] -> [Tq, n]
    return idx.defined() ? t.index_select(1, idx) : t.narrow(1, 0, n);
  }
  void put_rows(const at::Tensor& dst, const at::Tensor& src) const {  // dst [Tk, D]
    if (idx.defined()) dst.index_copy_(0, idx, src); else dst.narrow(0, 0, n).copy_(src);
  }
  void put_cols(const at::Tensor& dst, const at::Tensor& src) const {  // dst [Tq, Tk]
    if (idx.defined()) dst.index_copy_(1, idx, src); else dst.narrow(1, 0, n).copy_(src);
  }
};

// Batch b's softmax weights over its valid keys, [Tq, n], and their log-sum-exp, [Tq].
std::pair<at::Tensor, at::Tensor> dot_weights(const at::Tensor& qb, const at::Tensor& kv,
                                              double scale) {
  const at::Tensor e = at::mm(qb, kv.t()).mul_(scale);
  const at::Tensor m = std::get<0>(e.max(1, /*keepdim=*/true));  // NaN in a row stays NaN
  const at::Tensor p = (e - m).exp_();
  const at::Tensor s = p.sum(1, /*keepdim=*/true);
  return {p.div_(s), (m + s.log()).view({-1})};
}

void dot_forward_gemm(const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals,
                      const at::Tensor& lengths, const at::Tensor& mask, double scale,
                      at::Tensor& ctx, at::Tensor& weights, at::Tensor& lse) {
  const int64_t B = q.size(0), Tk = k.size(1);
  ctx.zero_();
  lse.fill_(-std::numeric_limits<double>::infinity());
  if (weights.defined()) weights.zero_();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const c10::NoGradGuard no_grad;  // a worker thread starts with grad mode on
    for (int64_t b = b0; b < b1; ++b) {
      const ValidKeys keys(lengths, mask, b, Tk);
      if (keys.n == 0) continue;  // no valid key: zero weights and context
      const at::Tensor kv = keys.rows(k[b]), vv = keys.rows(vals[b]);
      at::Tensor alpha, row_lse;
      std::tie(alpha, row_lse) = dot_weights(q[b], kv, scale);
      at::Tensor ctx_b = ctx[b];
      at::mm_out(ctx_b, alpha, vv);
      lse[b].copy_(row_lse);
      if (weights.defined()) keys.put_cols(weights[b], alpha);
    }
  });
}

void dot_backward_gemm(const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals,
                       const at::Tensor& lengths, const at::Tensor& mask, double scale,
                       const at::Tensor& dctx, const at::Tensor& dweights, at::Tensor& dq,
                       at::Tensor& dk, at::Tensor& dvals) {
  const int64_t B = q.size(0), Tk = k.size(1);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const c10::NoGradGuard no_grad;  // a worker thread starts with grad mode on
    for (int64_t b = b0; b < b1; ++b) {
      const ValidKeys keys(lengths, mask, b, Tk);
      if (keys.n == 0) continue;
      const at::Tensor kv = keys.rows(k[b]), vv = keys.rows(vals[b]);
      const at::Tensor alpha = dot_weights(q[b], kv, scale).first;  // [Tq, n]
      at::Tensor dalpha = at::mm(dctx[b], vv.t());
      if (dweights.defined()) dalpha.add_(keys.cols(dweights[b]));
      const at::Tensor de = alpha * (dalpha - (alpha * dalpha).sum(1, /*keepdim=*/true));
      at::Tensor dq_b = dq[b];
      at::mm_out(dq_b, de, kv).mul_(scale);
      keys.put_rows(dk[b], at::mm(de.t(), q[b]).mul_(scale));
      keys.put_rows(dvals[b], at::mm(alpha.t(), dctx[b]));
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals, const at::Tensor& lengths,
    const at::Tensor& mask, const at::Tensor& v, bool additive, double scale, bool need_weights) {
  const int64_t B = q.size(0), Tq = q.size(1), Tk = k.size(1), Dv = vals.size(2);
  at::Tensor ctx = at::empty({B, Tq, Dv}, q.options());
  at::Tensor weights = need_weights ? at::empty({B, Tq, Tk}, q.options()) : at::Tensor();
  at::Tensor lse = at::empty({B, Tq}, q.options());
  if (use_gemm_path(additive, Tq)) {
    dot_forward_gemm(q, k, vals, lengths, mask, scale, ctx, weights, lse);
    return {ctx, weights.defined() ? weights : at::empty({0}, q.options()), lse};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fused_rnn::attention_forward", [&] {
    AttnFwd<scalar_t> f;
    f.a = make_args<scalar_t>(q, k, vals, lengths, mask, v, additive, scale, lse);
    f.ctx = ctx.data_ptr<scalar_t>();
    f.weights = need_weights ? weights.data_ptr<scalar_t>() : nullptr;
    const auto& kern = attn_kernels<scalar_t>();
    at::parallel_for(0, B * Tq, row_grain(Tk, q.size(2)), [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> scratch(Tk);
      kern.fwd(f, r0, r1, scratch.data());
    });
  });
  return {ctx, weights.defined() ? weights : at::empty({0}, q.options()), lse};
}

std::vector<at::Tensor> attention_backward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals, const at::Tensor& lengths,
    const at::Tensor& mask, const at::Tensor& v, bool additive, double scale,
    const at::Tensor& lse, const at::Tensor& dctx, const at::Tensor& dweights) {
  const int64_t B = q.size(0), Tk = k.size(1), D = q.size(2);
  at::Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dvals = at::zeros_like(vals);
  if (use_gemm_path(additive, q.size(1))) {
    dot_backward_gemm(q, k, vals, lengths, mask, scale, dctx, dweights, dq, dk, dvals);
    return {dq, dk, dvals, at::empty({0}, q.options())};
  }
  // Each batch has its own part of dv, summed after in batch order: no two tasks write the
  // same memory, and the sum does not depend on how batches fall to threads (parts per
  // thread made dv differ in the last bits between 1 and 2 threads).
  at::Tensor dv_parts = at::zeros({B, additive ? D : 0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fused_rnn::attention_backward", [&] {
    AttnBwd<scalar_t> g;
    g.a = make_args<scalar_t>(q, k, vals, lengths, mask, v, additive, scale, lse);
    g.dctx = dctx.data_ptr<scalar_t>();
    g.dweights = dweights.defined() ? dweights.data_ptr<scalar_t>() : nullptr;
    g.dq = dq.data_ptr<scalar_t>();
    g.dk = dk.data_ptr<scalar_t>();
    g.dvals = dvals.data_ptr<scalar_t>();
    const auto& kern = attn_kernels<scalar_t>();
    // Over batches: a batch's dk and dvals sum over its queries, so one task owns them.
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> scratch(2 * Tk);
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* dv = additive ? dv_parts.data_ptr<scalar_t>() + b * D : nullptr;  // [D]
        kern.bwd(g, b, b + 1, scratch.data(), dv);
      }
    });
  });
  at::Tensor dv = additive ? dv_parts.sum(0) : at::empty({0}, q.options());
  return {dq, dk, dvals, dv};
}

}  // namespace cpu
}  // namespace fused_rnn
