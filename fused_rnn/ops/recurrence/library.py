"""One recurrence layer as two torch.library custom ops: the form torch.compile traces.

Under ``torch.compile`` Dynamo sees ``fused_rnn::recurrence_layer`` and
``fused_rnn::recurrence_layer_backward`` as opaque nodes (no graph break, no per-step
tracing); their fake kernels give the output shapes, the saved ones from the backend's
``saved_like``, and ``register_autograd`` joins them. The backend is chosen while tracing
and travels by name. Eager calls skip the ops and use the autograd Function directly
(``function.py``): a Python custom op goes through the dispatcher on every call, an
overhead that a decoder calling a cell once per step would pay each step.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ... import backends
from ...autocast import autocast_off
from ..._custom_ops import none_if_empty, or_empty, unaliased
from ...recompute import forward_saves
from .cells import GATES, LSTM, LayerWeights
from .saved_layout import SAVE_NOTHING


def _ops(backend: str):
    return backends.get_backend(backend).ops("recurrence")


@torch.library.custom_op("fused_rnn::recurrence_layer", mutates_args=())
def recurrence_layer(backend: str, cell: str, reverse: bool, x: Tensor, h0: Tensor,
                     c0: Optional[Tensor], lengths: Optional[Tensor], w_ih: Tensor,
                     w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                     w_hr: Optional[Tensor], saves: int
                     ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """``backend``'s ``_fwd`` for ``cell`` (a mode of cells.py; not named ``mode``, which
    torch's functionalization of mutating ops takes for itself) keeping ``saves`` (a SAVE_*
    of saved_layout.py); returns ``(y, h_n, c_n or empty, saved)``."""
    w = LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr)
    y, h_n, c_n, saved = _ops(backend)._fwd(cell, reverse, x, h0, c0, w, lengths, saves)
    out = unaliased([y, h_n, or_empty(c_n, x), *saved], [x, h0, c0, lengths, *w])
    return out[0], out[1], out[2], out[3:]


@recurrence_layer.register_fake
def _(backend, cell, reverse, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr, saves):
    T, B = x.shape[:2]
    H, P = w_hh.shape[0] // GATES[cell], w_hh.shape[1]
    c_n = x.new_empty(B, H) if cell == LSTM else x.new_empty(0)
    w = LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr)
    saved = _ops(backend).saved_like(cell, reverse, x, h0, c0, w, lengths, saves) if saves else ()
    return x.new_empty(T, B, P), x.new_empty(B, P), c_n, list(saved)


# The cpu backend writes the gate gradients over the saved activations, ``saved[0]``
# (a mutable list argument is not functionalized, a mutable tensor is: hence the split).
@torch.library.custom_op("fused_rnn::recurrence_layer_backward", mutates_args=("saved_first",))
def recurrence_layer_backward(backend: str, cell: str, reverse: bool, x: Tensor, h0: Tensor,
                              c0: Optional[Tensor], lengths: Optional[Tensor], w_ih: Tensor,
                              w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                              w_hr: Optional[Tensor], saved_first: Tensor,
                              saved_rest: list[Tensor], dy: Tensor, dh_n: Optional[Tensor],
                              dc_n: Optional[Tensor]
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                         Tensor]:
    """``backend``'s ``_bwd``: ``[dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr]``, empty
    where the input is None."""
    w = LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr)
    saved = [saved_first, *saved_rest]
    with autocast_off():  # a backward under autocast computes as its forward
        dx, dh0, dc0, dw = _ops(backend)._bwd(cell, reverse, x, h0, c0, w, lengths, saved,
                                              dy, dh_n, dc_n)
    grads = [or_empty(g, x) for g in (dx, dh0, dc0, *dw)]
    return tuple(unaliased(grads, [x, h0, c0, lengths, *w, *saved, dy, dh_n, dc_n]))


@recurrence_layer_backward.register_fake
def _(backend, cell, reverse, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr, saved_first,
      saved_rest, dy, dh_n, dc_n):
    return tuple(x.new_empty(0) if t is None else torch.empty_like(t)
                 for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))


def _setup_context(ctx, inputs, output):
    backend, mode, reverse, *tensors, _saves = inputs
    ctx.args = (backend, mode, reverse)
    ctx.save_for_backward(*tensors, *output[3])


def _backward(ctx, dy, dh_n, dc_n, _dsaved):
    backend, mode, reverse = ctx.args
    x, h0, c0, lengths, *rest = ctx.saved_tensors
    w, saved = rest[:5], rest[5:]
    if dy is None:
        dy = x.new_zeros(x.shape[:2] + h0.shape[-1:])
    grads = recurrence_layer_backward(backend, mode, reverse, x, h0, c0, lengths, *w,
                                      saved[0], list(saved[1:]), dy, dh_n,
                                      dc_n if mode == LSTM else None)
    dx, dh0, dc0, *dw = grads
    dw = [none_if_empty(g, t) for g, t in zip(dw, w)]
    return None, None, None, dx, dh0, none_if_empty(dc0, c0), None, *dw, None


recurrence_layer.register_autograd(_backward, setup_context=_setup_context)


def compiled_layer(backend: str, mode: str, reverse: bool, x, h0, c0, w: LayerWeights,
                   lengths=None):
    """:func:`function.recurrence_layer` for code being traced by torch.compile."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *w))
    y, h_n, c_n, _ = recurrence_layer(backend, mode, reverse, x, h0, c0, lengths, *w,
                                      forward_saves(*x.shape, h0.shape[-1]) if needs_grad
                                      else SAVE_NOTHING)
    return y, h_n, (c_n if mode == LSTM else None)
