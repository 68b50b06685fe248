"""One variant layer (LayerNorm LSTM/GRU, zoneout) as two torch.library custom ops, the form
torch.compile traces: as ``ops/recurrence/library.py`` for the plain recurrence.

Differences from the plain ops: the eight weights of ``VariantWeights`` (each its own
argument: a ``Tensor?[]`` holding None breaks the backward's structure check) and the
zoneout keeps, two optional tensors (data: no gradient). A backend whose ``_bwd`` writes over ``saved`` (``OVERWRITES_SAVED``) gets a
copy inside the backward op, so the op mutates none of its inputs: the compiled graph
pays one copy of the saved activations per layer where eager pays none.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ... import backends
from ...autocast import autocast_off
from ..._custom_ops import none_if_empty, or_empty, unaliased
from ..recurrence.cells import GATES, LSTM
from .layout import VariantWeights


def _ops(backend: str):
    return backends.get_backend(backend).ops("variants")


@torch.library.custom_op("fused_rnn::variant_layer", mutates_args=())
def variant_layer(backend: str, cell: str, reverse: bool, x: Tensor, h0: Tensor,
                  c0: Optional[Tensor], lengths: Optional[Tensor], keep_h: Optional[Tensor],
                  keep_c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                  ln_ih: Optional[Tensor], ln_hh: Optional[Tensor], ln_c_weight: Optional[Tensor],
                  ln_c_bias: Optional[Tensor], need_saved: bool
                  ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """``backend``'s ``_fwd``: ``(y, h_n, c_n or empty, saved)``."""
    w = VariantWeights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias)
    y, h_n, c_n, saved = _ops(backend)._fwd(cell, reverse, x, h0, c0, w, lengths, keep_h,
                                            keep_c, need_saved)
    out = unaliased([y, h_n, or_empty(c_n, x), *saved],
                    [x, h0, c0, lengths, keep_h, keep_c, *w])
    return out[0], out[1], out[2], out[3:]


@variant_layer.register_fake
def _(backend, cell, reverse, x, h0, c0, lengths, keep_h, keep_c, *args):
    *weights, need_saved = args
    T, B = x.shape[:2]
    H = weights[1].shape[0] // GATES[cell]
    w = VariantWeights(*weights)
    saved = (_ops(backend).saved_like(cell, reverse, x, h0, c0, w, lengths, keep_h, keep_c)
             if need_saved else ())
    c_n = x.new_empty(B, H) if cell == LSTM else x.new_empty(0)
    return x.new_empty(T, B, H), x.new_empty(B, H), c_n, list(saved)


@torch.library.custom_op("fused_rnn::variant_layer_backward", mutates_args=())
def variant_layer_backward(backend: str, cell: str, reverse: bool, x: Tensor, h0: Tensor,
                           c0: Optional[Tensor], lengths: Optional[Tensor],
                           keep_h: Optional[Tensor], keep_c: Optional[Tensor],
                           weights: list[Tensor], saved: list[Tensor], dy: Tensor,
                           dh_n: Optional[Tensor], dc_n: Optional[Tensor]) -> list[Tensor]:
    """``backend``'s ``_bwd``: ``[dx, dh0, dc0, *weight gradients]``, empty where the input
    is None; ``weights`` as ``VariantWeights``, an empty tensor for each None."""
    weights = [None if t.numel() == 0 else t for t in weights]
    ops = _ops(backend)
    if getattr(ops, "OVERWRITES_SAVED", False):
        saved = [t.clone() for t in saved]
    w = VariantWeights(*weights)
    with autocast_off():  # a backward under autocast computes as its forward
        dx, dh0, dc0, dw = ops._bwd(cell, reverse, x, h0, c0, w, lengths, keep_h, keep_c,
                                    saved, dy, dh_n, dc_n)
    grads = [or_empty(g, x) for g in (dx, dh0, dc0, *dw)]
    return unaliased(grads, [x, h0, c0, lengths, keep_h, keep_c, *w, *saved, dy, dh_n, dc_n])


@variant_layer_backward.register_fake
def _(backend, cell, reverse, x, h0, c0, lengths, keep_h, keep_c, weights, saved, dy, dh_n,
      dc_n):
    return [x.new_empty(0) if t is None else torch.empty_like(t) for t in (x, h0, c0, *weights)]


_N_W = len(VariantWeights._fields)


def _setup_context(ctx, inputs, output):
    backend, cell, reverse, *tensors, _need_saved = inputs
    ctx.args = (backend, cell, reverse)
    ctx.save_for_backward(*tensors, *output[3])


def _backward(ctx, dy, dh_n, dc_n, _dsaved):
    backend, cell, reverse = ctx.args
    x, h0, c0, lengths, keep_h, keep_c, *rest = ctx.saved_tensors
    weights, saved = rest[:_N_W], rest[_N_W:]
    if dy is None:
        dy = x.new_zeros(x.shape[:2] + h0.shape[-1:])
    dx, dh0, dc0, *dw = variant_layer_backward(
        backend, cell, reverse, x, h0, c0, lengths, keep_h, keep_c,
        [or_empty(t, x) for t in weights], list(saved), dy, dh_n, dc_n if cell == LSTM else None)
    dw = [none_if_empty(g, t) for g, t in zip(dw, weights)]
    return (None, None, None, dx, dh0, none_if_empty(dc0, c0), None, None, None, *dw, None)


variant_layer.register_autograd(_backward, setup_context=_setup_context)


def compiled_variant_layer(backend: str, mode: str, reverse: bool, x, h0, c0, w: VariantWeights,
                           lengths=None, keep_h=None, keep_c=None):
    """:func:`function.variant_layer` for code being traced by torch.compile."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *w))
    y, h_n, c_n, _ = variant_layer(backend, mode, reverse, x, h0, c0, lengths, keep_h, keep_c,
                                   *w, needs_grad)
    return y, h_n, (c_n if mode == LSTM else None)
