"""The shapes of ``saved`` (what a backend's ``_fwd`` keeps for its ``_bwd``), as empty
tensors: torch.compile traces the ops with these instead of running the kernels.

``tests/test_compile.py`` checks every backend's ``saved_like`` against what its ``_fwd``
really returns, so a change of layout cannot drift from its description here.
"""

from __future__ import annotations

from typing import Optional

import torch

from .cells import GATES, GRU, LSTM, LayerWeights

# What a launcher's forward keeps for its backward (its ``need_saved``; False and True are
# the first two): nothing, everything, or the states alone where the backend can recompute
# the activations from them (the cpu backend: see fused_rnn/recompute.py), everything
# elsewhere.
SAVE_NOTHING, SAVE_ALL, SAVE_STATES = 0, 1, 2


def _sizes(mode: str, x: torch.Tensor, w: LayerWeights):
    H = w.w_hh.shape[0] // GATES[mode]
    return x.shape[0], x.shape[1], H, w.w_hh.shape[1]


def fused_saved_like(mode: str, x: torch.Tensor, w: LayerWeights,
                     cell_dtype: Optional[torch.dtype] = None,
                     states_in_output: bool = False, acts_kept: bool = True) -> tuple:
    """The cpu and triton layout: LSTM ``(acts [T, B, 4H], hs [T+1, B, P], cs [T+1, B, H]
    [, y_pre [T, B, H]])``, GRU ``(acts [T, B, 4H], hs [T+1, B, H])``, RNN ``(hs,)``;
    ``cs`` in ``cell_dtype`` (default x's). ``states_in_output``: ``hs`` is the output y
    [T, B, P] instead (h_1..h_T; h_0 is the initial state). Without ``acts_kept`` (the
    backward recomputes them) ``acts`` is [0, B, 4H]."""
    T, B, H, P = _sizes(mode, x, w)
    hs = x.new_empty(T if states_in_output else T + 1, B, P)
    acts = x.new_empty(T if acts_kept else 0, B, 4 * H)
    if mode == LSTM:
        cs = x.new_empty(T + 1, B, H, dtype=cell_dtype or x.dtype)
        proj = (x.new_empty(T, B, H),) if w.w_hr is not None else ()
        return (acts, hs, cs) + proj
    if mode == GRU:
        return (acts, hs)
    return (hs,)


def reference_saved_like(mode: str, x: torch.Tensor, w: LayerWeights) -> tuple:
    """The reference layout: the fused one, except that RNN keeps its activations (the
    new states) apart from ``hs``: ``(acts [T, B, H], hs [T+1, B, H])``."""
    if mode in (LSTM, GRU):
        return fused_saved_like(mode, x, w)
    T, B, H, _ = _sizes(mode, x, w)
    return (x.new_empty(T, B, H), x.new_empty(T + 1, B, H))
