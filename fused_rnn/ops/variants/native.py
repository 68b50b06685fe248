"""Variant recurrences (LayerNorm LSTM/GRU, zoneout) on the compiled extension
(``torch.ops.fused_rnn.variant_*``, ``csrc/cpu/variant_recurrence.cpp``).

The launchers of ``layout.py``, one layer and one direction, time-major. ``saved`` is what
the C++ forward returns for its backward, each per-step row in the slot of the natural time
position it processed: with layer norm ``(LN(x W_ih^T) [T, B, G*H], its 1/sigma [T, B],
LN(h W_hh^T) [T, B, G*H], its 1/sigma [T, B], ...)``, without ``(pre-activations [T, B, 4H],
...)``; then LSTM the cell before each step ``[T, B, H]``; last, with lengths, the state
before each step ``[T, B, H]``, without lengths the output y itself (the states are y and h0).
"""

from __future__ import annotations

import torch

from ... import _native
from ..recurrence.cells import GRU, LSTM
from .layout import VariantWeights

MODES = {LSTM: 0, GRU: 1}

# _bwd writes the gradients over the saved rows (see ops/recurrence/function.py).
OVERWRITES_SAVED = True

_err = _native.load_error()
if _err is not None:
    raise ImportError(_err)
_ops = torch.ops.fused_rnn


def extension_launchers(forward: str, backward: str):
    """``(_fwd, _bwd)`` over the extension's ops named ``forward``/``backward`` (this schema:
    the cpu backend's ``variant_*``, the cuda backend's ``stepwise_variant_*``)."""
    forward_op, backward_op = getattr(_ops, forward), getattr(_ops, backward)

    def _fwd(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c, need_saved=True):
        """x [T, B, I]; h0 [B, H]; c0 [B, H] (LSTM) or None; lengths [B] int64 (CPU) or None;
        keep_h, keep_c [T, B, H] zoneout keeps or None.

        Returns ``y [T, B, H]``, ``h_n [B, H]``, ``c_n [B, H]`` or None, and ``saved`` (empty
        unless ``need_saved``).
        """
        y, h_n, c_n, saved = forward_op(
            MODES[mode], bool(reverse), x, h0, c0, lengths, *w, keep_h,
            keep_c if mode == LSTM else None, bool(need_saved))
        return y, h_n, (c_n if mode == LSTM else None), tuple(saved)

    def _bwd(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c, saved, dy,
             dh_n, dc_n):
        """dy [T, B, H]; dh_n [B, H] or None; dc_n [B, H] or None.

        Returns ``(dx, dh0, dc0, VariantWeights of gradients)``, None where the input is None.
        """
        dx, dh0, dc0, *dw = backward_op(
            MODES[mode], bool(reverse), x, h0, c0, lengths, *w, keep_h,
            keep_c if mode == LSTM else None, list(saved), dy, dh_n, dc_n)
        grads = VariantWeights(*(None if p is None else g for p, g in zip(w, dw)))
        return dx, dh0, (dc0 if mode == LSTM else None), grads

    return _fwd, _bwd


_fwd, _bwd = extension_launchers("variant_forward", "variant_backward")


def saved_like(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h=None, keep_c=None):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile)."""
    T, B = x.shape[:2]
    GH, H = w.w_hh.shape
    lstm = mode == LSTM
    new = x.new_empty
    saved = [new(T, B, 4 * H if lstm or not w.layer_norm else GH)]
    if w.layer_norm:
        saved += [new(T, B), new(T, B, GH), new(T, B)]
    if lstm:
        saved.append(new(T, B, H))
    saved.append(new(T, B, H))
    return tuple(saved)
