// torch.ops.fused_rnn.attention_forward / attention_backward: argument checks (every message
// names the argument), then the CPU kernels of csrc/cpu/attention.h.
#include "checks.h"

#include "../cpu/attention.h"

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;

struct AttnSizes {
  int64_t B, Tq, Tk, D, Dv;
};

AttnSizes check_attention(const Tensor& q, const Tensor& k, const Tensor& vals,
                          const optional<Tensor>& lengths, const optional<Tensor>& mask,
                          const optional<Tensor>& v, bool additive) {
  TORCH_CHECK(q.dim() == 3, "fused_rnn: query must be 3-D [B, Tq, D], got shape ", shape(q));
  TORCH_CHECK(q.device().is_cpu(), "fused_rnn: query must be a CPU tensor, got ", q.device());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "fused_rnn: query must be float32 or float64 on the cpu backend, got ",
              q.scalar_type());
  AttnSizes s{q.size(0), q.size(1), k.dim() == 3 ? k.size(1) : -1, q.size(2), -1};
  TORCH_CHECK(k.dim() == 3, "fused_rnn: keys must be 3-D [B, Tk, D], got shape ", shape(k));
  check_like("keys", k, "query", q, {s.B, s.Tk, s.D});
  TORCH_CHECK(vals.dim() == 3, "fused_rnn: values must be 3-D [B, Tk, Dv], got shape ",
              shape(vals));
  s.Dv = vals.size(2);
  check_like("values", vals, "query", q, {s.B, s.Tk, s.Dv});
  for (const Tensor* t : {&q, &k, &vals}) {
    TORCH_CHECK(t->is_contiguous(), "fused_rnn: query, keys and values must be contiguous");
  }
  const bool has_v = v.has_value() && v->defined();
  TORCH_CHECK(has_v == additive, "fused_rnn: v is required for additive attention and only for it");
  if (has_v) check_like("v", *v, "query", q, {s.D});
  const bool has_len = lengths.has_value() && lengths->defined();
  const bool has_mask = mask.has_value() && mask->defined();
  TORCH_CHECK(!(has_len && has_mask), "fused_rnn: give lengths or mask, not both");
  if (has_len) {
    const Tensor& L = *lengths;
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
    const Tensor& M = *mask;
    TORCH_CHECK(M.device().is_cpu() && M.scalar_type() == at::kBool && M.is_contiguous() &&
                    M.sizes() == at::IntArrayRef({s.B, s.Tk}),
                "fused_rnn: mask must be a contiguous bool CPU tensor of shape [", s.B, ", ",
                s.Tk, "], got ", M.scalar_type(), " ", shape(M), " on ", M.device());
  }
  return s;
}

std::tuple<Tensor, Tensor, Tensor> attention_forward(
    const Tensor& q, const Tensor& k, const Tensor& vals, const optional<Tensor>& lengths,
    const optional<Tensor>& mask, const optional<Tensor>& v, bool additive, double scale,
    bool need_weights) {
  check_attention(q, k, vals, lengths, mask, v, additive);
  return cpu::attention_forward(q, k, vals, get(lengths), get(mask), get(v), additive, scale,
                                need_weights);
}

std::vector<Tensor> attention_backward(
    const Tensor& q, const Tensor& k, const Tensor& vals, const optional<Tensor>& lengths,
    const optional<Tensor>& mask, const optional<Tensor>& v, bool additive, double scale,
    const Tensor& lse, const Tensor& dctx, const optional<Tensor>& dweights) {
  const AttnSizes s = check_attention(q, k, vals, lengths, mask, v, additive);
  check_like("lse", lse, "query", q, {s.B, s.Tq});
  check_like("dctx", dctx, "query", q, {s.B, s.Tq, s.Dv});
  const bool has_dw = dweights.has_value() && dweights->defined();
  if (has_dw) check_like("dweights", *dweights, "query", q, {s.B, s.Tq, s.Tk});
  return cpu::attention_backward(q, k, vals, get(lengths), get(mask), get(v), additive, scale,
                                 lse.contiguous(), dctx.contiguous(),
                                 has_dw ? dweights->contiguous() : Tensor());
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def(
      "attention_forward(Tensor query, Tensor keys, Tensor values, Tensor? lengths, "
      "Tensor? mask, Tensor? v, bool additive, float scale, bool need_weights) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor query, Tensor keys, Tensor values, Tensor? lengths, "
      "Tensor? mask, Tensor? v, bool additive, float scale, Tensor lse, Tensor dctx, "
      "Tensor? dweights) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("attention_forward", &fused_rnn::attention_forward);
  m.impl("attention_backward", &fused_rnn::attention_backward);
}
