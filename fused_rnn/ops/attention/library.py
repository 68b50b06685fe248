"""Fused attention as two torch.library custom ops: the form torch.compile traces.

As for the recurrence (``ops/recurrence/library.py``): opaque to Dynamo, shapes from the
fake kernels (the saved ones from the backend's ``saved_like``), joined by
``register_autograd``, the backend chosen while tracing and passed by name; eager calls
use the autograd Function of ``function.py`` directly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ... import backends
from ...autocast import autocast_off
from ..._custom_ops import none_if_empty, or_empty, unaliased


def _ops(backend: str):
    return backends.get_backend(backend).ops("attention")


@torch.library.custom_op("fused_rnn::fused_attention", mutates_args=())
def attention(backend: str, kind: str, scale: float, need_weights: bool, q: Tensor, k: Tensor,
              values: Tensor, v: Optional[Tensor], valid: Optional[Tensor]
              ) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``backend``'s ``_fwd``: ``(context, weights or empty, saved)``."""
    context, weights, saved = _ops(backend)._fwd(q, k, values, valid, kind, v, scale,
                                                 need_weights)
    out = unaliased([context, or_empty(weights, q), *saved], [q, k, values, v, valid])
    return out[0], out[1], out[2:]


@attention.register_fake
def _(backend, kind, scale, need_weights, q, k, values, v, valid):
    (B, Tq), Tk = q.shape[:2], k.shape[1]
    weights = q.new_empty(B, Tq, Tk) if need_weights else q.new_empty(0)
    saved = _ops(backend).saved_like(q, k, values, valid, kind, v, scale, need_weights)
    return q.new_empty(B, Tq, values.shape[-1]), weights, list(saved)


@torch.library.custom_op("fused_rnn::fused_attention_backward", mutates_args=())
def attention_backward(backend: str, kind: str, scale: float, q: Tensor, k: Tensor,
                       values: Tensor, v: Optional[Tensor], valid: Optional[Tensor],
                       saved: list[Tensor], dcontext: Tensor, dweights: Optional[Tensor]
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``backend``'s ``_bwd``: ``(dq, dk, dvalues, dv or empty)``."""
    with autocast_off():  # a backward under autocast computes as its forward
        grads = _ops(backend)._bwd(q, k, values, valid, kind, v, scale, list(saved), dcontext,
                                   dweights)
    grads = [or_empty(g, q) for g in grads]
    return tuple(unaliased(grads, [q, k, values, v, valid, *saved, dcontext, dweights]))


@attention_backward.register_fake
def _(backend, kind, scale, q, k, values, v, valid, saved, dcontext, dweights):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(values),
            q.new_empty(0) if v is None else torch.empty_like(v))


def _setup_context(ctx, inputs, output):
    backend, kind, scale, need_weights, *tensors = inputs
    ctx.args = (backend, kind, scale, need_weights)
    ctx.save_for_backward(*tensors, *output[2])


def _backward(ctx, dcontext, dweights, _dsaved):
    backend, kind, scale, need_weights = ctx.args
    q, k, values, v, valid, *saved = ctx.saved_tensors
    if dcontext is None:
        dcontext = q.new_zeros(q.shape[:2] + values.shape[-1:])
    dq, dk, dvalues, dv = attention_backward(backend, kind, scale, q, k, values, v, valid,
                                             saved, dcontext,
                                             dweights if need_weights else None)
    return None, None, None, None, dq, dk, dvalues, none_if_empty(dv, v), None


attention.register_autograd(_backward, setup_context=_setup_context)


def compiled_attention(backend: str, kind: str, scale: float, need_weights: bool, q, k,
                       values, v, valid):
    """:class:`function.AttentionFunction` for code being traced by torch.compile."""
    context, weights, _ = attention(backend, kind, scale, need_weights, q, k, values, v, valid)
    return context, (weights if need_weights else None)
