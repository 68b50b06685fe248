"""Variant recurrences (LayerNorm LSTM/GRU, zoneout) on Triton kernels
(``triton_kernels.py``): the launchers ``_fwd``/``_bwd`` of ``layout.py``'s contract.

The input side of all steps, ``ln_ih * LN(x W_ih^T) + b_ih``, is one GEMM and one layer
norm pass before the loop; its backward one pass and two GEMMs after it. The loop runs in
one launch per sequence (a program per batch tile, all hidden units: the layer norms of
the recurrent rows stay inside a program), the weight gradients are one reduction each
over all steps. ``saved`` (loop order, ``state`` = fp32 for half inputs, else x's dtype):
``(hs [T+1, B, H], cs [T+1, B, H] state (LSTM; [1, B, H] GRU), gh [T, B, G*H] state:
LN(h W_hh^T) with LN, h W_hh^T without, act [T, B, A*H] state: LSTM i f g o and LN(c~)
(c~ without LN), GRU r z n ah_n, stat [T, B, 2] state: 1/std of h W_hh^T and of c~)``,
then with LN the input side's ``(x W_ih^T [T, B, G*H], mean, rstd)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..recurrence import triton as rec
from ..recurrence.cells import GATES, GRU, LSTM
from . import triton_kernels as K
from .layout import LN_EPS, VariantWeights

MODES = {LSTM: K.LSTM_MODE, GRU: K.GRU_MODE}
_ACTS = {LSTM: 5, GRU: 4}  # saved activation columns per unit
_HALF = (torch.float16, torch.bfloat16)


def kernel_config(hidden: int, dtype: torch.dtype) -> rec.KernelConfig:
    """The recurrence's whole-sequence tiles: these kernels hold fewer tiles at once (their
    phases run one after another), and tests/test_variants_triton_compile.py checks every
    configuration for spills on sm_80 and sm_90."""
    return rec._seq_config(hidden, hidden, dtype)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return rec._acc_dtype(dtype) if dtype in _HALF else dtype


def _constants(x, mode, w: VariantWeights, lengths, reverse, keep_h, keep_c) -> dict:
    import triton.language as tl

    tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(MODE=MODES[mode], LN=w.layer_norm, KEEP_H=keep_h is not None,
                KEEP_C=mode == LSTM and keep_c is not None,
                HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse),
                ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
                PRECISION="tf32" if tf32 else "ieee")


def _kernel_weights(mode, x, w: VariantWeights):
    """W_hh, b_hh, ln_hh, ln_c_weight, ln_c_bias as the kernels read them: contiguous, with
    the neutral value (or a placeholder the kernel never reads) where absent."""
    N, H = w.w_hh.shape
    lstm_ln = mode == LSTM and w.layer_norm
    one = x.new_empty(1)
    return (w.w_hh.contiguous(),
            x.new_zeros(N) if w.b_hh is None else w.b_hh.contiguous(),
            w.ln_hh.contiguous() if w.layer_norm else one,
            (x.new_ones(H) if w.ln_c_weight is None else w.ln_c_weight.contiguous())
            if lstm_ln else one,
            (x.new_zeros(H) if w.ln_c_bias is None else w.ln_c_bias.contiguous())
            if lstm_ln else one)


def _keeps(x, keep_h, keep_c):
    one = x.new_empty(1)
    return (one if keep_h is None else keep_h.contiguous(),
            one if keep_c is None else keep_c.contiguous())


def _input_side(x, w: VariantWeights):
    """gi = ln_ih * LN(x W_ih^T) + b_ih [T, B, G*H] (x W_ih^T + b_ih without LN), and what
    its backward needs: (x W_ih^T, mean, rstd) with LN, else ()."""
    if not w.layer_norm:
        return F.linear(x, w.w_ih, w.b_ih).contiguous(), ()
    gx = F.linear(x, w.w_ih)
    gi, mean, rstd = torch.native_layer_norm(gx, [gx.shape[-1]], w.ln_ih, w.b_ih, LN_EPS)
    return gi.contiguous(), (gx, mean, rstd)


def _reference():
    from . import reference  # another backend's module, only for what launches nothing

    return reference


def _fwd(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c,
         need_saved=True):
    """x [T, B, I]; h0, c0 [B, H] (c0 None for GRU); lengths [B] int64 or None;
    keep_h, keep_c [T, B, H] or None. Returns ``(y [T, B, H], h_n, c_n or None, saved)``."""
    T, B = x.shape[0], x.shape[1]
    if B == 0 or T == 0:  # nothing to launch
        return _reference()._fwd(mode, reverse, x, h0, c0, w, lengths, keep_h, keep_c,
                                 need_saved)
    H = w.w_hh.shape[1]
    N, A = GATES[mode] * H, _ACTS[mode]
    cfg = kernel_config(H, x.dtype)
    const = _constants(x, mode, w, lengths, reverse, keep_h, keep_c)
    state = _state_dtype(x.dtype)
    gi, inputs = _input_side(x, w)
    slots = T + 1 if need_saved else 2  # every state for backward, else two alternating
    kept = T if need_saved else 1  # the phases' scratch when nothing is saved
    hs = x.new_empty(slots, B, H)
    hs[0] = h0
    cs = x.new_empty(slots if mode == LSTM else 1, B, H, dtype=state)
    if mode == LSTM:
        cs[0] = c0
    gh = x.new_empty(kept, B, N, dtype=state)
    act = x.new_empty(kept, B, A * H, dtype=state)
    stat = x.new_empty(T if need_saved and w.layer_norm else 1, B, 2, dtype=state)
    y = x.new_empty(T, B, H)
    w_hh, b_hh, ln_hh, ln_cw, ln_cb = _kernel_weights(mode, x, w)
    kh, kc = _keeps(x, keep_h, keep_c)
    with rec._device(x):
        K.variant_fwd_kernel[(rec.triton_cdiv(B, cfg.block_b),)](
            B, H, T, gi, w_hh, b_hh, ln_hh, ln_cw, ln_cb, kh, kc, hs, cs, gh, act, stat, y,
            rec._lengths_arg(x, lengths), SAVE=need_saved, **const,
            BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, **rec._launch(cfg))
    last = T if need_saved else T % 2
    c_n = cs[last].to(x.dtype) if mode == LSTM else None
    if not need_saved:
        return y, hs[last].clone(), c_n, ()
    return y, hs[last].clone(), c_n, (hs, cs, gh, act, stat) + inputs


def _bwd(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c, saved,
         dy, dh_n, dc_n):
    """dy [T, B, H]; dh_n, dc_n [B, H] or None. Returns ``(dx, dh0, dc0,
    VariantWeights of gradients)``, None where the input is None."""
    T, B = x.shape[0], x.shape[1]
    if B == 0 or T == 0:
        return _reference()._bwd(mode, reverse, x, h0, c0, w, lengths, keep_h, keep_c, saved,
                                 dy, dh_n, dc_n)
    H = w.w_hh.shape[1]
    N = GATES[mode] * H
    lstm_ln = mode == LSTM and w.layer_norm
    cfg = kernel_config(H, x.dtype)
    const = _constants(x, mode, w, lengths, reverse, keep_h, keep_c)
    hs, cs, gh, act, stat = saved[:5]
    acc = rec._acc_dtype(x.dtype)
    dh = torch.zeros(2, B, H, dtype=acc, device=x.device)  # two alternating slots
    dc = torch.zeros(2 if mode == LSTM else 1, B, H, dtype=acc, device=x.device)
    if dh_n is not None:
        dh[(T - 1) % 2] = dh_n
    if dc_n is not None:
        dc[(T - 1) % 2] = dc_n
    dai = x.new_empty(T, B, N)
    dah = x.new_empty(T, B, N)
    dgh = x.new_empty(T, B, N) if w.layer_norm else dah  # without LN, dgh is dah
    du = x.new_empty(T, B, H) if lstm_ln else x.new_empty(1)
    w_hh, _, ln_hh, ln_cw, ln_cb = _kernel_weights(mode, x, w)
    kh, kc = _keeps(x, keep_h, keep_c)
    with rec._device(x):
        K.variant_bwd_kernel[(rec.triton_cdiv(B, cfg.block_b),)](
            B, H, T, dy.contiguous(), dh, dc, hs, cs, gh, act, stat, w_hh, ln_hh, ln_cw, ln_cb,
            kh, kc, dai, dah, dgh, du, rec._lengths_arg(x, lengths), **const,
            BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, **rec._launch(cfg))

    flat = rec.reference._flat
    like = lambda t, p: None if p is None else t.to(p.dtype)  # noqa: E731
    if w.layer_norm:
        gx, mean, rstd = saved[5:8]
        dgx, dln_ih, db_ih = torch.ops.aten.native_layer_norm_backward(
            dai, gx, [N], mean, rstd, w.ln_ih, w.b_ih, [True, True, w.b_ih is not None])
    else:
        dgx, dln_ih, db_ih = dai, None, None if w.b_ih is None else flat(dai).sum(0)
    grads = VariantWeights(
        w_ih=flat(dgx).t().mm(flat(x)),
        w_hh=flat(dgh).t().mm(flat(hs[:-1])),
        b_ih=like(db_ih, w.b_ih),
        b_hh=None if w.b_hh is None else flat(dah).sum(0),
        ln_ih=like(dln_ih, w.ln_ih),
        ln_hh=like((flat(dah) * flat(gh)).sum(0), w.ln_hh) if w.layer_norm else None,
        ln_c_weight=like((du * act[..., 4 * H:]).sum((0, 1)), w.ln_c_weight) if lstm_ln
        else None,
        ln_c_bias=like(du.sum((0, 1)), w.ln_c_bias) if lstm_ln else None,
    )
    dx = torch.matmul(dgx, w.w_ih)
    return dx, dh[1].to(x.dtype), (dc[1].to(x.dtype) if mode == LSTM else None), grads


def saved_like(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h=None, keep_c=None):
    """Empty tensors shaped (and typed) as the ``saved`` that ``_fwd`` returns."""
    T, B = x.shape[0], x.shape[1]
    if B == 0 or T == 0:  # _fwd hands these to the reference
        return _reference().saved_like(mode, reverse, x, h0, c0, w, lengths, keep_h, keep_c)
    H = w.w_hh.shape[1]
    N = GATES[mode] * H
    state = _state_dtype(x.dtype)
    e = lambda *s, dtype=state: x.new_empty(*s, dtype=dtype)  # noqa: E731
    saved = (e(T + 1, B, H, dtype=x.dtype), e(T + 1 if mode == LSTM else 1, B, H),
             e(T, B, N), e(T, B, _ACTS[mode] * H), e(T if w.layer_norm else 1, B, 2))
    if w.layer_norm:
        # torch's layer norm keeps its statistics in fp32 for half inputs on CUDA, in the
        # input's dtype on CPU: ask it (a [1, 1] call, free under fake tensors).
        stats = torch.native_layer_norm(x.new_empty(1, 1), [1], None, None, LN_EPS)[2].dtype
        saved += (e(T, B, N, dtype=x.dtype), e(T, B, 1, dtype=stats), e(T, B, 1, dtype=stats))
    return saved
