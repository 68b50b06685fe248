// torch.ops.fused_rnn.attention_forward / attention_backward: argument checks (every message
// names the argument), then the CPU kernels of csrc/cpu/attention.h.
#include "attention_checks.h"
#include "schemas.h"

#include <string>

#include "../cpu/attention.h"

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;

void check_cpu_query(const Tensor& q) {
  TORCH_CHECK(q.device().is_cpu(), "fused_rnn: query must be a CPU tensor, got ", q.device());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "fused_rnn: query must be float32 or float64 on the cpu backend, got ",
              q.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor> attention_forward(
    const Tensor& q, const Tensor& k, const Tensor& vals, const optional<Tensor>& lengths,
    const optional<Tensor>& mask, const optional<Tensor>& v, bool additive, double scale,
    bool need_weights) {
  check_cpu_query(q);
  check_attention(q, k, vals, lengths, mask, v, additive);
  // v may be a strided view (the kernels read it densely): opt makes it contiguous.
  return cpu::attention_forward(q, k, vals, get(lengths), get(mask), opt(v), additive, scale,
                                need_weights);
}

std::vector<Tensor> attention_backward(
    const Tensor& q, const Tensor& k, const Tensor& vals, const optional<Tensor>& lengths,
    const optional<Tensor>& mask, const optional<Tensor>& v, bool additive, double scale,
    const Tensor& lse, const Tensor& dctx, const optional<Tensor>& dweights) {
  check_cpu_query(q);
  const AttnSizes s = check_attention(q, k, vals, lengths, mask, v, additive);
  check_attention_grads(q, s, lse, q.scalar_type(), dctx, dweights);
  const bool has_dw = dweights.has_value() && dweights->defined();
  return cpu::attention_backward(q, k, vals, get(lengths), get(mask), opt(v), additive, scale,
                                 lse.contiguous(), dctx.contiguous(),
                                 has_dw ? dweights->contiguous() : Tensor());
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def((std::string("attention_forward") + fused_rnn::schema::kAttentionForward).c_str());
  m.def((std::string("attention_backward") + fused_rnn::schema::kAttentionBackward).c_str());
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("attention_forward", &fused_rnn::attention_forward);
  m.impl("attention_backward", &fused_rnn::attention_backward);
}
