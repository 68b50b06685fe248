"""The variant recurrences: LayerNorm LSTM/GRU and zoneout, their weights and equations.

One layer and one direction per call, time-major, as ``ops/recurrence``; every backend of
this family (``reference.py``, ``native.py``, ``triton.py``) has the launchers

    _fwd(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c,
         need_saved=True) -> (y [T, B, H], h_n [B, H], c_n [B, H] or None, saved)
    _bwd(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c, saved,
         dy, dh_n, dc_n) -> (dx, dh0, dc0, VariantWeights of gradients, None where None)

``mode`` is ``cells.LSTM`` or ``cells.GRU`` (no projection here). ``lengths`` as in
``ops/recurrence`` (row b runs steps t < L_b; past it the row keeps its state and emits
zeros; the reverse direction reverses each row within its length). ``saved`` is each
backend's own.

Layer norm (Ba et al. 2016) of a row v of n values, over the whole row:
``LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5)``, biased variance, as ``torch.nn.LayerNorm``.
The gate normalisations have gains only (their shifts would add to ``b_ih + b_hh``).

LayerNorm LSTM (``ln_ih`` given), per step and row:
    a  = ln_ih * LN(x W_ih^T) + b_ih + ln_hh * LN(h W_hh^T) + b_hh      (LN over all 4H)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
    c~ = f * c + i * g
    h~ = o * tanh(ln_c_weight * LN(c~) + ln_c_bias)                    (LN over H)
LayerNorm GRU (``b_hn`` stays inside the reset product, as torch.nn's GRU):
    ai = ln_ih * LN(x W_ih^T) + b_ih;  ah = ln_hh * LN(h W_hh^T) + b_hh  (LN over all 3H)
    r, z = sigmoid(ai_r + ah_r), sigmoid(ai_z + ah_z);  n = tanh(ai_n + r * ah_n)
    h~ = (1 - z) * n + z * h
Without layer norm (``ln_ih`` is None), ``h~``/``c~`` are torch.nn's LSTM/GRU step.

Zoneout (Krueger et al. 2016), with keep coefficients ``keep_h``, ``keep_c`` [T, B, H]
(natural time order; None = no zoneout, i.e. all zeros):
    c' = keep_c * c + (1 - keep_c) * c~         (LSTM)
    h' = keep_h * h + (1 - keep_h) * h~          and the output is y = h'
``h~`` takes ``c~``, not the zoned ``c'``, as in the paper. In training the keeps are
Bernoulli(p) masks (1 = the unit keeps its previous value, no rescaling); in evaluation they
are p everywhere, the masks' expectation. The caller draws them (``draw_keeps``), so every
backend sees the same masks and a run repeats under ``torch.manual_seed``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

LN_EPS = 1e-5


class VariantWeights(NamedTuple):
    """One layer and direction. G gates (4 LSTM, 3 GRU), H hidden, I input size."""

    w_ih: torch.Tensor  # [G*H, I]
    w_hh: torch.Tensor  # [G*H, H]
    b_ih: Optional[torch.Tensor] = None  # [G*H]
    b_hh: Optional[torch.Tensor] = None  # [G*H]
    ln_ih: Optional[torch.Tensor] = None  # [G*H] gain of LN(x W_ih^T); None: no layer norm
    ln_hh: Optional[torch.Tensor] = None  # [G*H] gain of LN(h W_hh^T)
    ln_c_weight: Optional[torch.Tensor] = None  # [H] LSTM: gain of LN(c~)
    ln_c_bias: Optional[torch.Tensor] = None  # [H] LSTM: shift of LN(c~)

    @property
    def layer_norm(self) -> bool:
        return self.ln_ih is not None


def draw_keeps(p: float, training: bool, shape, lstm: bool, like: torch.Tensor):
    """``(keep_h, keep_c)`` for one layer and direction, ``shape`` = (T, B, H): Bernoulli(p)
    masks in training (h first, then c, from torch's default generator), p in evaluation;
    ``(None, None)`` when ``p == 0``."""
    if p == 0:
        return None, None
    if not training:
        keep = like.new_full(shape, p)
        return keep, (keep if lstm else None)
    keep_h = torch.bernoulli(like.new_full(shape, p))
    keep_c = torch.bernoulli(like.new_full(shape, p)) if lstm else None
    return keep_h, keep_c
