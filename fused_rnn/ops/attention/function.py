"""The autograd Function of fused attention, over a backend's ``_fwd``/``_bwd``.

Every score kind reaches the kernels as one of two: ``dot`` (``scale * q . k``; the
``general`` score's ``W q`` and the default ``1/sqrt(D)`` of ``scaled_dot`` are applied
here) or ``additive`` (``v . tanh(q + k)``). Forward saves only the log-sum-exp of each
query row; backward recomputes the scores.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ...autocast import without_autocast
from .library import compiled_attention
from .reference import ADDITIVE, GENERAL, SCALED_DOT


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ops, kind, scale, need_weights, q, k, values, v, valid):
        context, weights, saved = ops._fwd(q, k, values, valid, kind, v, scale, need_weights)
        ctx.ops, ctx.kind, ctx.scale = ops, kind, scale
        ctx.save_for_backward(q, k, values, v, valid, *saved)
        ctx.set_materialize_grads(False)
        return context, weights

    @staticmethod
    @once_differentiable
    @without_autocast
    def backward(ctx, dcontext, dweights):
        q, k, values, v, valid, *saved = ctx.saved_tensors
        if dcontext is None:
            dcontext = q.new_zeros(q.shape[:2] + values.shape[-1:])
        dq, dk, dvalues, dv = ctx.ops._bwd(q, k, values, valid, ctx.kind, v, ctx.scale, saved,
                                           dcontext, dweights)
        return None, None, None, None, dq, dk, dvalues, dv, None


def fused_attention(ops, query, keys, values, valid, score, v, weight, scale, need_weights,
                    compiled_backend=None):
    """query [B, Tq, Dq]; returns ``(context [B, Tq, Dv], weights [B, Tq, Tk] or None)``.

    ``compiled_backend`` (a backend name, under torch.compile) runs the custom op of
    ``library.py`` instead of the Function."""
    if score == ADDITIVE:
        kind, scale = "additive", 1.0
    else:
        kind = "dot"
        if score == GENERAL:
            query = query.matmul(weight.t())
        if score == SCALED_DOT:
            scale = 1.0 / math.sqrt(keys.shape[-1]) if scale is None else scale
        else:
            scale = 1.0
    v = v if kind == "additive" else None
    if compiled_backend is not None:
        return compiled_attention(compiled_backend, kind, float(scale), need_weights, query, keys,
                                  values, v, valid)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                            for t in (query, keys, values, v))):
        # Inference (a greedy decoder's step): no graph, so no Function and nothing saved.
        return ops._fwd(query, keys, values, valid, kind, v, float(scale), need_weights)[:2]
    return AttentionFunction.apply(ops, kind, float(scale), need_weights, query, keys, values,
                                   v, valid)
