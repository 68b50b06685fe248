"""The cuda backend's recurrence: a GEMM per step (cuBLAS) and the fused pointwise step
kernel of ``csrc/include/fused_rnn/recurrence_step.cuh``, through the ops
``torch.ops.fused_rnn.stepwise_recurrence_*`` (``csrc/bindings/stepwise_recurrence.cpp``).

The same launchers as ``native.py``. On CPU tensors the ops run the kernels' per-element
functions on host threads: the tests drive this module there, so every part but the launch
itself is checked without a GPU. ``saved``: LSTM ``(acts [T, B, 4H], hs [T+1, B, P],
cs [T+1, B, H] in float32 (float64 for float64)[, y_pre [T, B, H]])``, GRU ``(acts, hs)``,
RNN ``(hs,)``.
"""

from __future__ import annotations

import torch

from ... import _native
from .cells import GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights
from .saved_layout import fused_saved_like

MODES = {LSTM: 0, GRU: 1, RNN_TANH: 2, RNN_RELU: 3}

# _bwd writes the LSTM gate gradients over the saved activations (see function.py).
OVERWRITES_SAVED = True

_err = _native.load_error()
if _err is not None:
    raise ImportError(_err)
_ops = torch.ops.fused_rnn


def _fwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, need_saved=True):
    """x [T, B, I]; h0 [B, P]; c0 [B, H] (LSTM) or None; lengths [B] int64 (CPU) or None.

    Returns ``y [T, B, P]``, ``h_n [B, P]``, ``c_n [B, H]`` or None, and ``saved``
    (empty unless ``need_saved``).
    """
    y, h_n, c_n, saved = _ops.stepwise_recurrence_forward(
        MODES[mode], bool(reverse), x, h0, c0, lengths, *w, bool(need_saved))
    return y, h_n, (c_n if mode == LSTM else None), tuple(saved)


def _bwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saved, dy, dh_n, dc_n):
    """Returns ``(dx, dh0, dc0, LayerWeights of gradients)``, None where the input is None."""
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _ops.stepwise_recurrence_backward(
        MODES[mode], bool(reverse), x, h0, c0, lengths, *w, list(saved), dy, dh_n, dc_n)
    grads = LayerWeights(w_ih=dw_ih, w_hh=dw_hh, b_ih=None if w.b_ih is None else db_ih,
                         b_hh=None if w.b_hh is None else db_hh,
                         w_hr=None if w.w_hr is None else dw_hr)
    return dx, dh0, (dc0 if mode == LSTM else None), grads


def saved_like(mode, reverse, x, h0, c0, w: LayerWeights, lengths):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile)."""
    cell = torch.float64 if x.dtype == torch.float64 else torch.float32
    return fused_saved_like(mode, x, w, cell_dtype=cell)
