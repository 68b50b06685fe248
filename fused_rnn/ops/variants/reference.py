"""Plain-PyTorch variant recurrences (LayerNorm LSTM/GRU, zoneout): the oracle of this family.

One layer, one direction per call, time-major, with the launchers of ``layout.py``.
``_fwd`` is ordinary differentiable PyTorch (autograd through it is the tests' second
oracle); ``_bwd`` is the explicit backward every fused backend of the family implements:

1. a reverse-time loop turning the incoming ``dh`` (and ``dc``) into the gate
   pre-activation gradients of each step, through the zoneout mix, the cell's layer norm
   and the hidden-side layer norm, passing ``dh_prev`` on;
2. after the loop, the input-side layer norm's backward over all steps at once, then one
   GEMM or sum per weight gradient over all steps.

Half inputs are computed in fp32 and stored back in their dtype, as ``ops/recurrence``'s
reference does; lengths and the reverse direction are handled the same way (its helpers).

``saved`` (in loop order, time-major):
``acts [T, B, 4H]`` (LSTM ``i, f, g, o``; GRU ``r, z, n, hn`` with ``hn`` the hidden-side
``n`` pre-activation after its norm and bias), ``hs [T+1, B, H]``; LSTM also
``cs [T+1, B, H]`` (zoned states) and ``c_tilde [T, B, H]`` (the unzoned new cell);
with layer norm also ``gh_hat [T, B, G*H]`` and ``gh_rstd [T, B, 1]`` (the normalised
``h W_hh^T`` and its 1/std), and for LSTM ``c_hat [T, B, H]``, ``c_rstd [T, B, 1]``.
The input side's norm is recomputed in backward from ``x`` (one GEMM over all steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..recurrence.cells import GATES, GRU, LSTM
from ..recurrence.reference import (_HALF, _active, _flat, _fp32, _gather_time, _keep_past_length,
                                   _like, _reverse_index)
from .layout import LN_EPS, VariantWeights


def _normalize(v: torch.Tensor):
    """``(LN(v), 1/sqrt(var + eps))`` over the last axis, biased variance (torch.nn's)."""
    mean = v.mean(-1, keepdim=True)
    var = (v - mean).pow(2).mean(-1, keepdim=True)
    rstd = (var + LN_EPS).rsqrt()
    return (v - mean) * rstd, rstd


def _normalize_backward(d_hat: torch.Tensor, v_hat: torch.Tensor, rstd: torch.Tensor):
    """dL/dv given dL/dLN(v) = ``d_hat``, the normalised ``v_hat`` and its ``rstd``."""
    return rstd * (d_hat - d_hat.mean(-1, keepdim=True)
                   - v_hat * (d_hat * v_hat).mean(-1, keepdim=True))


def _affine(v_hat, gain, shift):
    out = v_hat * gain
    return out if shift is None else out + shift


def _input_side(x, w: VariantWeights):
    """``x W_ih^T`` normalised (gain ``ln_ih``) plus ``b_ih``, all steps; also LN's parts."""
    if not w.layer_norm:
        return F.linear(x, w.w_ih, w.b_ih), None, None
    v_hat, rstd = _normalize(F.linear(x, w.w_ih))
    return _affine(v_hat, w.ln_ih, w.b_ih), v_hat, rstd


def _step(mode, gi, h, c, w: VariantWeights, keep_h, keep_c):
    """One step. Returns ``(h', c', saved tensors of this step)`` before length masking."""
    gh_raw = F.linear(h, w.w_hh)
    if w.layer_norm:
        gh_hat, gh_rstd = _normalize(gh_raw)
        gh = _affine(gh_hat, w.ln_hh, w.b_hh)
        ln_saved = (gh_hat, gh_rstd)
    else:
        gh = gh_raw if w.b_hh is None else gh_raw + w.b_hh
        ln_saved = ()
    if mode == LSTM:
        i, f, g, o = (gi + gh).chunk(4, -1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_tilde = f * c + i * g
        if w.layer_norm:
            c_hat, c_rstd = _normalize(c_tilde)
            h_tilde = o * _affine(c_hat, w.ln_c_weight, w.ln_c_bias).tanh()
            ln_saved = ln_saved + (c_hat, c_rstd)
        else:
            h_tilde = o * c_tilde.tanh()
        c_new = c_tilde if keep_c is None else keep_c * c + (1 - keep_c) * c_tilde
        acts = torch.cat([i, f, g, o], -1)
        extra = (c_tilde,)
    else:
        ir, iz, in_ = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r, z = (ir + hr).sigmoid(), (iz + hz).sigmoid()
        n = (in_ + r * hn).tanh()
        h_tilde = (1 - z) * n + z * h
        c_new, acts, extra = None, torch.cat([r, z, n, hn], -1), ()
    h_new = h_tilde if keep_h is None else keep_h * h + (1 - keep_h) * h_tilde
    return h_new, c_new, (acts,) + extra + ln_saved


def _check_mode(mode):
    if mode not in (LSTM, GRU):
        raise ValueError(f"mode must be {LSTM!r} or {GRU!r} for the variant recurrences, got {mode!r}")


def _fwd(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c, need_saved=True):
    """Run one layer and direction.

    x [T, B, I]; h0 [B, H]; c0 [B, H] (LSTM) or None; lengths [B] int64 or None;
    keep_h, keep_c [T, B, H] in natural time order or None (no zoneout).
    Returns ``y [T, B, H]`` (zero past each row's length), ``h_n [B, H]``, ``c_n [B, H]``
    or None, and ``saved`` (the module docstring's layout), or () if not ``need_saved``.
    """
    _check_mode(mode)
    if x.dtype in _HALF:
        y, h, c, saved = _fwd(mode, reverse, *_fp32(x, h0, c0), VariantWeights(*_fp32(*w)),
                              lengths, *_fp32(keep_h, keep_c), need_saved)
        return (*_like(x.dtype, y, h, c), _like(x.dtype, *saved))
    if reverse:
        index = _reverse_index(x, lengths)
        x = _gather_time(x, index)
        keep_h, keep_c = (None if k is None else _gather_time(k, index) for k in (keep_h, keep_c))
    active = _active(x, lengths)
    gi_all = _input_side(x, w)[0]
    h, c = h0, c0
    ys, hs, cs, per_step = [], [h0], [c0], []
    for t in range(x.shape[0]):
        h_new, c_new, saved = _step(mode, gi_all[t], h, c, w,
                                    None if keep_h is None else keep_h[t],
                                    None if keep_c is None else keep_c[t])
        h, c, y_t = _keep_past_length(None if active is None else active[t], h_new, c_new, h, c)
        ys.append(y_t)
        if need_saved:
            hs.append(h)
            cs.append(c)
            per_step.append(saved)
    y = torch.stack(ys)
    if reverse:
        y = _gather_time(y, index)
    if not need_saved:
        return y, h, c, ()
    columns = [torch.stack(col) for col in zip(*per_step)]
    states = [torch.stack(hs)] + ([torch.stack(cs)] if mode == LSTM else [])
    return y, h, c, tuple(columns[:1] + states + columns[1:])


def _unpack_saved(mode, saved, layer_norm: bool):
    """The named parts of ``saved``; None where this mode and norm have none."""
    saved = list(saved)
    acts, hs = saved[0], saved[1]
    cs, c_tilde = (saved[2], saved[3]) if mode == LSTM else (None, None)
    rest = saved[4:] if mode == LSTM else saved[2:]
    gh_hat, gh_rstd = (rest[0], rest[1]) if layer_norm else (None, None)
    c_hat, c_rstd = (rest[2], rest[3]) if layer_norm and mode == LSTM else (None, None)
    return acts, hs, cs, c_tilde, gh_hat, gh_rstd, c_hat, c_rstd


def _step_backward(mode, g, dc, w: VariantWeights, t, parts, keep_h, keep_c):
    """Gradients of one step, given dL/dh' = ``g`` and (LSTM) dL/dc' = ``dc``.

    Returns ``(da [B, G*H]`` for the input side, ``da_h`` for ``b_hh``/``ln_hh``,
    ``dgh_raw`` for ``W_hh`` (``da_h`` through the hidden norm), ``dhc`` (LSTM with layer
    norm: dL/d(cell norm's output), else None), ``dh_prev``, ``dc_prev)``.
    """
    acts, hs, cs, c_tilde, gh_hat, gh_rstd, c_hat, c_rstd = parts
    h_prev = hs[t]
    dh_tilde = g if keep_h is None else (1 - keep_h) * g
    dh_prev = 0 if keep_h is None else keep_h * g
    dhc = None
    if mode == LSTM:
        i, f, gg, o = acts[t].chunk(4, -1)
        dc_tilde = dc if keep_c is None else (1 - keep_c) * dc
        if w.layer_norm:
            th = _affine(c_hat[t], w.ln_c_weight, w.ln_c_bias).tanh()
            dhc = dh_tilde * o * (1 - th * th)
            dc_tilde = dc_tilde + _normalize_backward(dhc * w.ln_c_weight, c_hat[t], c_rstd[t])
        else:
            th = c_tilde[t].tanh()
            dc_tilde = dc_tilde + dh_tilde * o * (1 - th * th)
        do = dh_tilde * th
        da = torch.cat([dc_tilde * gg * i * (1 - i), dc_tilde * cs[t] * f * (1 - f),
                        dc_tilde * i * (1 - gg * gg), do * o * (1 - o)], -1)
        da_h = da
        dc_prev = dc_tilde * f + (0 if keep_c is None else keep_c * dc)
    else:
        r, z, n, hn = acts[t].chunk(4, -1)
        da_n = dh_tilde * (1 - z) * (1 - n * n)
        da_r = da_n * hn * r * (1 - r)
        da_z = dh_tilde * (h_prev - n) * z * (1 - z)
        da = torch.cat([da_r, da_z, da_n], -1)
        da_h = torch.cat([da_r, da_z, da_n * r], -1)
        dh_prev = dh_prev + dh_tilde * z
        dc_prev = None
    if w.layer_norm:
        dgh_raw = _normalize_backward(da_h * w.ln_hh, gh_hat[t], gh_rstd[t])
    else:
        dgh_raw = da_h
    return da, da_h, dgh_raw, dhc, dh_prev + torch.matmul(dgh_raw, w.w_hh), dc_prev


def _bwd(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c, saved,
         dy, dh_n, dc_n):
    """Explicit backward of ``_fwd``. Gradients are None where the input is None.

    dy [T, B, H]; dh_n [B, H] or None; dc_n [B, H] or None.
    Returns ``(dx, dh0, dc0, VariantWeights of gradients)``.
    """
    _check_mode(mode)
    if x.dtype in _HALF:
        dx, dh, dc, grads = _bwd(mode, reverse, *_fp32(x, h0, c0), VariantWeights(*_fp32(*w)),
                                 lengths, *_fp32(keep_h, keep_c), _fp32(*saved),
                                 *_fp32(dy, dh_n, dc_n))
        return (*_like(x.dtype, dx, dh, dc), VariantWeights(*_like(x.dtype, *grads)))
    parts = _unpack_saved(mode, saved, w.layer_norm)
    hs, c_hat, gh_hat = parts[1], parts[6], parts[4]
    if reverse:
        index = _reverse_index(x, lengths)
        x = _gather_time(x, index)
        dy = _gather_time(dy, index)
        keep_h, keep_c = (None if k is None else _gather_time(k, index) for k in (keep_h, keep_c))
    active = _active(x, lengths)
    T = x.shape[0]
    dh = torch.zeros_like(h0) if dh_n is None else dh_n
    dc = None if mode != LSTM else (torch.zeros_like(c0) if dc_n is None else dc_n)
    das, das_h, dghs, dhcs = [None] * T, [None] * T, [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        m = None if active is None else active[t]
        g = dh + (dy[t] if m is None else torch.where(m, dy[t], torch.zeros_like(dy[t])))
        da, da_h, dgh, dhc, dh_prev, dc_prev = _step_backward(
            mode, g, dc, w, t, parts, None if keep_h is None else keep_h[t],
            None if keep_c is None else keep_c[t])
        if m is not None:
            da, da_h, dgh = (torch.where(m, v, torch.zeros_like(v)) for v in (da, da_h, dgh))
            dhc = None if dhc is None else torch.where(m, dhc, torch.zeros_like(dhc))
            dh_prev = torch.where(m, dh_prev, g)
            if dc_prev is not None:
                dc_prev = torch.where(m, dc_prev, dc)
        das[t], das_h[t], dghs[t], dhcs[t] = da, da_h, dgh, dhc
        dh, dc = dh_prev, dc_prev
    da_all, dah_all, dgh_all = torch.stack(das), torch.stack(das_h), torch.stack(dghs)
    _, xw_hat, xw_rstd = _input_side(x, w)
    if w.layer_norm:  # the input side's norm, all steps at once
        dxw = _normalize_backward(da_all * w.ln_ih, xw_hat, xw_rstd)
    else:
        dxw = da_all
    dx = torch.matmul(dxw, w.w_ih)
    if reverse:
        dx = _gather_time(dx, index)
    flat, flat_h = _flat(da_all), _flat(dah_all)
    dhc_flat = _flat(torch.stack(dhcs)) if dhcs[0] is not None else None
    grads = VariantWeights(
        w_ih=_flat(dxw).t().mm(_flat(x)),
        w_hh=_flat(dgh_all).t().mm(_flat(hs[:-1])),
        b_ih=None if w.b_ih is None else flat.sum(0),
        b_hh=None if w.b_hh is None else flat_h.sum(0),
        ln_ih=None if w.ln_ih is None else (flat * _flat(xw_hat)).sum(0),
        ln_hh=None if w.ln_hh is None else (flat_h * _flat(gh_hat)).sum(0),
        ln_c_weight=None if w.ln_c_weight is None else (dhc_flat * _flat(c_hat)).sum(0),
        ln_c_bias=None if w.ln_c_bias is None else dhc_flat.sum(0),
    )
    return dx, dh, dc, grads


def saved_like(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h=None, keep_c=None):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile)."""
    T, B = x.shape[0], x.shape[1]
    GH = w.w_hh.shape[0]
    H = GH // GATES[mode]
    e = x.new_empty
    saved = [e(T, B, 4 * H), e(T + 1, B, H)]
    if mode == LSTM:
        saved += [e(T + 1, B, H), e(T, B, H)]
    if w.layer_norm:
        saved += [e(T, B, GH), e(T, B, 1)]
        if mode == LSTM:
            saved += [e(T, B, H), e(T, B, 1)]
    return tuple(saved)
