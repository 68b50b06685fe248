"""Plain-PyTorch encoder-decoder attention: the oracle every attention backend is tested
against. Differentiable by autograd; the additive score materialises [B, Tq, Tk, A],
which is exactly what the fused kernels avoid. Half inputs (bf16, fp16) are computed in
fp32 and rounded once at the end, as the fused kernels accumulate: rounding the scores
and the softmax in bf16 made the gradients ~10x less accurate than torch's
scaled_dot_product_attention in bf16 (tests/test_low_precision.py).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

DOT, SCALED_DOT, GENERAL, ADDITIVE = "dot", "scaled_dot", "general", "additive"
SCORES = (DOT, SCALED_DOT, GENERAL, ADDITIVE)


def scores(query, keys, score: str, v=None, weight=None, scale=None) -> torch.Tensor:
    """Raw scores [B, Tq, Tk].

    dot: ``q . k``; scaled_dot: ``q . k * scale`` (default ``1/sqrt(Dk)``); general:
    ``(W q) . k`` with ``weight`` W [Dk, Dq]; additive: ``v . tanh(pq + pk)`` where query
    and keys are already projected (pq [B, Tq, A], pk [B, Tk, A]) and ``v`` is [A].
    """
    if score == ADDITIVE:
        return torch.tanh(query.unsqueeze(2) + keys.unsqueeze(1)).matmul(v)
    if score == GENERAL:
        query = query.matmul(weight.t())
    e = query.matmul(keys.transpose(1, 2))
    if score == SCALED_DOT:
        e = e * (1.0 / math.sqrt(keys.shape[-1]) if scale is None else scale)
    return e


def masked_softmax(e: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Softmax over the last axis restricted to ``valid`` [B, Tk] (True = attend).

    A row with no valid key gets all-zero weights, not NaN; a NaN score at a valid key
    propagates; one at a masked key is ignored. No keys at all (Tk = 0): empty weights.
    """
    if e.shape[-1] == 0:  # amax over an empty axis raises; there is nothing to normalise
        return e.clone()
    if valid is not None:
        e = e.masked_fill(~valid.unsqueeze(1), float("-inf"))
    m = e.amax(-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m).detach()
    p = torch.exp(e - m)
    denom = p.sum(-1, keepdim=True)
    return p / torch.where(denom == 0, torch.ones_like(denom), denom)


def forward(query, keys, values, valid=None, score: str = DOT, v=None, weight=None, scale=None):
    """query [B, Tq, Dq], keys [B, Tk, Dk], values [B, Tk, Dv], valid [B, Tk] bool or None.

    Returns ``(context [B, Tq, Dv], weights [B, Tq, Tk])``. A masked key or value has no
    effect, not even a NaN or inf one (a zero weight times NaN would be NaN), as in a kernel
    that never reads it.
    """
    if query.dtype in (torch.float16, torch.bfloat16):
        up = [None if t is None else t.float() for t in (query, keys, values, v, weight)]
        context, w = forward(up[0], up[1], up[2], valid, score, up[3], up[4], scale)
        return context.to(query.dtype), w.to(query.dtype)
    if valid is not None:
        keep = valid.unsqueeze(-1)
        keys, values = keys.masked_fill(~keep, 0), values.masked_fill(~keep, 0)
    w = masked_softmax(scores(query, keys, score, v, weight, scale), valid)
    return w.matmul(values), w
