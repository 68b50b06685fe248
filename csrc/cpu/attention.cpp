// The fused attention op on CPU: allocation, threads and dispatch around the kernels of
// attention_kernels.h. Arguments are checked by the caller (csrc/bindings/attention.cpp).
#include "attention.h"

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

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals, const at::Tensor& lengths,
    const at::Tensor& mask, const at::Tensor& v, bool additive, double scale, bool need_weights) {
  const int64_t B = q.size(0), Tq = q.size(1), Tk = k.size(1), Dv = vals.size(2);
  at::Tensor ctx = at::empty({B, Tq, Dv}, q.options());
  at::Tensor weights = need_weights ? at::empty({B, Tq, Tk}, q.options()) : at::Tensor();
  at::Tensor lse = at::empty({B, Tq}, q.options());
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
  // Batches in `chunks` contiguous parts, each with its own part of dv (added after), so no
  // two tasks write the same memory whatever the threading.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
  at::Tensor dv_parts = at::zeros({chunks, additive ? D : 0}, q.options());
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
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      std::vector<scalar_t> scratch(2 * Tk);
      for (int64_t c = c0; c < c1; ++c) {
        scalar_t* dv = additive ? dv_parts[c].data_ptr<scalar_t>() : nullptr;
        kern.bwd(g, B * c / chunks, B * (c + 1) / chunks, scratch.data(), dv);
      }
    });
  });
  at::Tensor dv = additive ? dv_parts.sum(0) : at::empty({0}, q.options());
  return {dq, dk, dvals, dv};
}

}  // namespace cpu
}  // namespace fused_rnn
