// Argument checks of the attention ops (the cpu backend's and the row kernels'): every
// message names the argument. The dtype is the caller's to check.
#pragma once

#include "checks.h"

namespace fused_rnn {

struct AttnSizes {
  int64_t B, Tq, Tk, D, Dv;
};

// query [B, Tq, D], keys [B, Tk, D], values [B, Tk, Dv] alike and contiguous; v [D] exactly
// with the additive score; lengths (int64 on the CPU, [B], in [0, Tk]) or mask (bool [B, Tk]
// on query's device), not both.
inline AttnSizes check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals,
                                 const c10::optional<at::Tensor>& lengths,
                                 const c10::optional<at::Tensor>& mask,
                                 const c10::optional<at::Tensor>& v, bool additive) {
  TORCH_CHECK(q.dim() == 3, "fused_rnn: query must be 3-D [B, Tq, D], got shape ", shape(q));
  AttnSizes s{q.size(0), q.size(1), k.dim() == 3 ? k.size(1) : -1, q.size(2), -1};
  TORCH_CHECK(k.dim() == 3, "fused_rnn: keys must be 3-D [B, Tk, D], got shape ", shape(k));
  check_like("keys", k, "query", q, {s.B, s.Tk, s.D});
  TORCH_CHECK(vals.dim() == 3, "fused_rnn: values must be 3-D [B, Tk, Dv], got shape ",
              shape(vals));
  s.Dv = vals.size(2);
  check_like("values", vals, "query", q, {s.B, s.Tk, s.Dv});
  for (const at::Tensor* t : {&q, &k, &vals}) {
    TORCH_CHECK(t->is_contiguous(), "fused_rnn: query, keys and values must be contiguous");
  }
  const bool has_v = v.has_value() && v->defined();
  TORCH_CHECK(has_v == additive, "fused_rnn: v is required for additive attention and only for it");
  if (has_v) check_like("v", *v, "query", q, {s.D});
  const bool has_len = lengths.has_value() && lengths->defined();
  const bool has_mask = mask.has_value() && mask->defined();
  TORCH_CHECK(!(has_len && has_mask), "fused_rnn: give lengths or mask, not both");
  if (has_len) {
    const at::Tensor& L = *lengths;
    TORCH_CHECK(L.device().is_cpu() && L.scalar_type() == at::kLong && L.dim() == 1 &&
                    L.size(0) == s.B && L.is_contiguous(),
                "fused_rnn: lengths must be a contiguous int64 CPU tensor of shape [", s.B,
                "], got ", L.scalar_type(), " ", shape(L), " on ", L.device());
    if (s.B > 0) {
      const int64_t lo = L.min().item<int64_t>(), hi = L.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi <= s.Tk, "fused_rnn: lengths must lie in [0, ", s.Tk,
                  "], got values from ", lo, " to ", hi);
    }
  }
  if (has_mask) {
    const at::Tensor& M = *mask;
    TORCH_CHECK(M.device() == q.device() && M.scalar_type() == at::kBool && M.is_contiguous() &&
                    M.sizes() == at::IntArrayRef({s.B, s.Tk}),
                "fused_rnn: mask must be a contiguous bool tensor of shape [", s.B, ", ", s.Tk,
                "] on ", q.device(), ", got ", M.scalar_type(), " ", shape(M), " on ", M.device());
  }
  return s;
}

// The gradients the backward ops take: the saved log-sum-exp (accumulation dtype `acc`),
// dctx, optional dweights.
inline void check_attention_grads(const at::Tensor& q, const AttnSizes& s, const at::Tensor& lse,
                                  at::ScalarType acc, const at::Tensor& dctx,
                                  const c10::optional<at::Tensor>& dweights) {
  TORCH_CHECK(lse.device() == q.device() && lse.scalar_type() == acc &&
                  lse.sizes() == at::IntArrayRef({s.B, s.Tq}),
              "fused_rnn: lse must be a ", acc, " tensor of shape [", s.B, ", ", s.Tq, "] on ",
              q.device(), ", got ", lse.scalar_type(), " ", shape(lse), " on ", lse.device());
  check_like("dctx", dctx, "query", q, {s.B, s.Tq, s.Dv});
  if (dweights.has_value() && dweights->defined()) {
    check_like("dweights", *dweights, "query", q, {s.B, s.Tq, s.Tk});
  }
}

}  // namespace fused_rnn
