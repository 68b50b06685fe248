// Fused encoder-decoder attention on CPU (see attention_kernels.h): one call for all query
// rows of a batch. Arguments are checked by the caller (csrc/bindings/attention.cpp).
#pragma once

#include "aten.h"

#include <tuple>
#include <vector>

namespace fused_rnn {
namespace cpu {

// q [B, Tq, D]; k [B, Tk, D]; vals [B, Tk, Dv]; lengths [B] int64 or mask [B, Tk] bool or
// neither (undefined); v [D] (additive) or undefined. additive: e = v . tanh(q + k), else
// e = scale * q . k. Returns ctx [B, Tq, Dv], weights [B, Tq, Tk] (empty unless
// need_weights) and lse [B, Tq], the log-sum-exp backward needs.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals, const at::Tensor& lengths,
    const at::Tensor& mask, const at::Tensor& v, bool additive, double scale, bool need_weights);

// Given forward's inputs, its lse, dctx [B, Tq, Dv] and dweights [B, Tq, Tk] (or undefined):
// (dq, dk, dvals, dv), dv empty unless additive.
std::vector<at::Tensor> attention_backward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& vals, const at::Tensor& lengths,
    const at::Tensor& mask, const at::Tensor& v, bool additive, double scale,
    const at::Tensor& lse, const at::Tensor& dctx, const at::Tensor& dweights);

}  // namespace cpu
}  // namespace fused_rnn
