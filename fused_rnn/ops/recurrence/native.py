"""Recurrence on the compiled extension (``fused_rnn._C``, ``torch.ops.fused_rnn.*``).

The same launchers as ``reference.py`` (``_fwd``/``_bwd``, one layer and one direction,
time-major); the time loops, the fused gate passes and the GEMMs run in C++
(``csrc/cpu/recurrence.cpp``). ``saved`` is what the C++ forward returns for its backward:
LSTM ``(acts [T, B, 4H], hs [T+1, B, P], cs [T+1, B, H][, y_pre [T, B, H]])``,
GRU ``(acts [T, B, 4H], hs [T+1, B, H])``, RNN ``(hs [T+1, B, H],)``; forward in time
without lengths or projection, ``hs`` is the output y itself (the states h_1..h_T).

bf16 and fp16: stored in their dtype, computed in fp32 as the reference does, ``saved``
rounded to the half dtype as the reference keeps it. The forward op takes bf16 itself (on CPUs
with AVX512-BF16 its GEMMs multiply bf16 pairs, see csrc/cpu/recurrence.cpp's forward_bf16)
and returns fp32, and so does the backward op (there its sums over steps multiply bf16,
see backward_bf16); fp16 is widened here first.
"""

from __future__ import annotations

import torch

from ... import _native
from .cells import GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights
from .reference import _HALF, _fp32, _like
from .saved_layout import SAVE_ALL, SAVE_NOTHING, SAVE_STATES, fused_saved_like

MODES = {LSTM: 0, GRU: 1, RNN_TANH: 2, RNN_RELU: 3}

# _bwd writes the gate gradients over the saved activations (see function.py).
OVERWRITES_SAVED = True

_err = _native.load_error()
if _err is not None:
    raise ImportError(_err)
_ops = torch.ops.fused_rnn


def extension_launchers(forward: str, backward: str):
    """``(_fwd, _bwd)`` over the extension's ops named ``forward``/``backward`` (this
    schema: the cpu backend's ``recurrence_*``, the cuda backend's ``stepwise_recurrence_*``)."""
    forward_op, backward_op = getattr(_ops, forward), getattr(_ops, backward)

    def _fwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, need_saved=True):
        """x [T, B, I]; h0 [B, P]; c0 [B, H] (LSTM) or None; lengths [B] int64 (CPU) or None;
        need_saved: a SAVE_* of saved_layout.py (False and True are the first two).

        Returns ``y [T, B, P]``, ``h_n [B, P]``, ``c_n [B, H]`` or None, and ``saved``
        (empty unless ``need_saved``; see saved_like for what SAVE_STATES keeps).
        """
        y, h_n, c_n, saved = forward_op(
            MODES[mode], bool(reverse), x, h0, c0, lengths, *w, int(need_saved))
        return y, h_n, (c_n if mode == LSTM else None), tuple(saved)

    def _bwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saved, dy, dh_n, dc_n):
        """dy [T, B, P]; dh_n [B, P] or None; dc_n [B, H] or None.

        Returns ``(dx, dh0, dc0, LayerWeights of gradients)``, None where the input is None.
        """
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = backward_op(
            MODES[mode], bool(reverse), x, h0, c0, lengths, *w, list(saved), dy, dh_n, dc_n)
        grads = LayerWeights(
            w_ih=dw_ih,
            w_hh=dw_hh,
            b_ih=None if w.b_ih is None else db_ih,
            b_hh=None if w.b_hh is None else db_hh,
            w_hr=None if w.w_hr is None else dw_hr,
        )
        return dx, dh0, (dc0 if mode == LSTM else None), grads

    return _fwd, _bwd


def widening_half(_fwd, _bwd):
    """``(_fwd, _bwd)`` that run half inputs through the fp32 launchers given: inputs widened
    (bf16 goes to the ops as it is, which return fp32), outputs, gradients and ``saved``
    rounded back (``saved`` the output y where it is y)."""

    def fwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, need_saved=True):
        if x.dtype not in _HALF:
            return _fwd(mode, reverse, x, h0, c0, w, lengths, need_saved)
        # Activations recomputed from rounded states would not be the forward's: kept.
        need_saved = SAVE_ALL if need_saved else SAVE_NOTHING
        if x.dtype == torch.bfloat16:
            y, h_n, c_n, saved = _fwd(mode, reverse, x, h0, c0, w, lengths, need_saved)
        else:
            y, h_n, c_n, saved = _fwd(mode, reverse, *_fp32(x, h0, c0), LayerWeights(*_fp32(*w)),
                                      lengths, need_saved)
        y_half, h_half, c_half = _like(x.dtype, y, h_n, c_n)
        saved_half = tuple(y_half if s.data_ptr() == y.data_ptr() and s.shape == y.shape
                           else s.to(x.dtype) for s in saved)
        return y_half, h_half, c_half, saved_half

    def bwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saved, dy, dh_n, dc_n):
        if x.dtype not in _HALF:
            return _bwd(mode, reverse, x, h0, c0, w, lengths, saved, dy, dh_n, dc_n)
        if x.dtype == torch.bfloat16:
            dx, dh0, dc0, grads = _bwd(mode, reverse, x, h0, c0, w, lengths, saved, dy, dh_n, dc_n)
        else:
            dx, dh0, dc0, grads = _bwd(mode, reverse, *_fp32(x, h0, c0), LayerWeights(*_fp32(*w)),
                                       lengths, list(_fp32(*saved)), *_fp32(dy, dh_n, dc_n))
        return (*_like(x.dtype, dx, dh0, dc0), LayerWeights(*_like(x.dtype, *grads)))

    return fwd, bwd


_fwd, _bwd = widening_half(*extension_launchers("recurrence_forward", "recurrence_backward"))


# The dtypes of cell_step; the cells' bf16 and fp16 steps go through the launchers (which round).
CELL_STEP_DTYPES = (torch.float32, torch.float64)


def cell_step(mode, x, h0, c0, w: LayerWeights):
    """One step of a cell, its autograd in C++ (``csrc/bindings/cell_step.cpp``: a decoder's
    Python Function cost more than its step). x [B, I]; h0 [B, H]; c0 [B, H] (LSTM) or None;
    float32 or float64. Returns ``(h', c' or None)``."""
    out = _ops.cell_step(MODES[mode], x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh)
    return out[0], (out[1] if mode == LSTM else None)


def saved_like(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saves=SAVE_ALL):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile):
    with ``SAVE_STATES`` the backward recomputes LSTM's and GRU's activations in fp32 and
    fp64 without a projection (csrc/cpu/recurrence.cpp's ActsRecompute)."""
    in_output = not reverse and lengths is None and w.w_hr is None
    recomputed = (saves == SAVE_STATES and w.w_hr is None
                  and x.dtype in (torch.float32, torch.float64))
    return fused_saved_like(mode, x, w, states_in_output=in_output, acts_kept=not recomputed)
