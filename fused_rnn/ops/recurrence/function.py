"""The autograd Function of one layer and direction, for every recurrent family (the plain
cells here, the variants of ``ops/variants``).

It knows nothing of the math: forward calls the backend's ``_fwd`` and saves what it
returns, backward hands that back to the backend's ``_bwd``. The first backward of a
fused kernel is never differentiated again (``once_differentiable``), as with cuDNN.

A backend whose ``_bwd`` reuses the memory of ``saved`` (``OVERWRITES_SAVED = True``: the
gate gradients take the place of the saved activations, so backward needs no buffer of
its own) leaves ``saved`` spent; a second backward through the same graph
(``retain_graph=True``) then recomputes it with the forward first.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ...autocast import without_autocast
from ...recompute import forward_saves
from .cells import LSTM, LayerWeights


def saved_for_backward(ctx, saved: tuple, refill) -> tuple:
    """``saved`` for this backward. A backend whose ``_bwd`` writes over it
    (``OVERWRITES_SAVED``) leaves it spent: a second backward gets it anew from
    ``refill()``, which runs the forward again."""
    if getattr(ctx.ops, "OVERWRITES_SAVED", False):
        if getattr(ctx, "saved_spent", False):
            saved = refill()
        ctx.saved_spent = True
    return saved


class LayerFunction(torch.autograd.Function):
    """One layer and direction of any recurrent family: the plain cells (``LayerWeights``)
    and the variants (``VariantWeights``, whose zoneout keeps come as ``extras``).

    ``apply(ops, mode, reverse, weights_type, n_extras, x, h0, c0, lengths, *extras,
    *weights)``; the backend's launchers take ``(mode, reverse, x, h0, c0, w, lengths,
    *extras, ...)``. The extras are data (no gradient), as the lengths."""

    @staticmethod
    def forward(ctx, ops, mode, reverse, weights_type, n_extras, x, h0, c0, lengths, *rest):
        extras, w = tuple(rest[:n_extras]), weights_type(*rest[n_extras:])
        saves = forward_saves(*x.shape, h0.shape[-1])
        y, h_n, c_n, saved = ops._fwd(mode, reverse, x, h0, c0, w, lengths, *extras,
                                      need_saved=saves)
        ctx.ops, ctx.mode, ctx.reverse, ctx.saves = ops, mode, reverse, saves
        ctx.weights_type, ctx.n_extras = weights_type, n_extras
        ctx.save_for_backward(x, h0, c0, lengths, *extras, *w, *saved)
        ctx.set_materialize_grads(False)
        if mode != LSTM:
            return y, h_n
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    @without_autocast
    def backward(ctx, dy, dh_n, dc_n=None):
        x, h0, c0, lengths, *rest = ctx.saved_tensors
        n, m = ctx.n_extras, ctx.n_extras + len(ctx.weights_type._fields)
        extras, w, saved = tuple(rest[:n]), ctx.weights_type(*rest[n:m]), tuple(rest[m:])
        saved = saved_for_backward(ctx, saved, lambda: ctx.ops._fwd(
            ctx.mode, ctx.reverse, x, h0, c0, w, lengths, *extras, need_saved=ctx.saves)[3])
        if dy is None:
            dy = torch.zeros(x.shape[:2] + (h0.shape[-1],), dtype=x.dtype, device=x.device)
        dx, dh0, dc0, dw = ctx.ops._bwd(ctx.mode, ctx.reverse, x, h0, c0, w, lengths, *extras,
                                        saved, dy, dh_n, dc_n)
        return (None,) * 5 + (dx, dh0, dc0, None) + (None,) * n + tuple(dw)


def run_layer(ops, mode, reverse, x, h0, c0, w, lengths=None, extras=()):
    """One layer and direction through the backend module ``ops``: its launchers directly
    when nothing needs a gradient (nothing is saved), else :class:`LayerFunction`.
    Returns ``(y, h_n, c_n or None)``."""
    tensors = (x, h0, c0, *w)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return ops._fwd(mode, reverse, x, h0, c0, w, lengths, *extras, need_saved=False)[:3]
    out = LayerFunction.apply(ops, mode, reverse, type(w), len(extras), x, h0, c0, lengths,
                              *extras, *w)
    return out if mode == LSTM else (*out, None)


def recurrence_layer(ops, mode, reverse, x, h0, c0, w: LayerWeights, lengths=None):
    """One layer and direction through the backend module ``ops``.

    x [T, B, I]; h0 [B, P]; c0 [B, H] for LSTM, else None; lengths [B] int64 or None.
    Returns ``(y [T, B, P], h_n [B, P], c_n [B, H] or None)``.
    """
    return run_layer(ops, mode, reverse, x, h0, c0, w, lengths)
