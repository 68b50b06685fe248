"""Plain-PyTorch recurrence: the oracle every backend is tested against.

One layer, one direction per call, time-major. ``_fwd`` is ordinary differentiable
PyTorch (autograd through it is the tests' second oracle); ``_bwd`` is the explicit
backward of ``MATH.md`` that every fused backend implements:

1. a reverse-time loop that turns the incoming ``dh`` (and ``dc``) into the gate
   pre-activation gradients ``da`` of each step, passing ``dh_prev = da_h @ W_hh`` on;
2. after the loop, one GEMM per weight gradient over all steps at once.

Half inputs (bf16, fp16) are stored in their dtype but computed in fp32, as torch.nn and
the fused kernels do: gates and a cell state rounded to bf16 at every step made this
backend's bf16 LSTM output error ~3x torch.nn's (tests/test_low_precision.py).

Lengths: row b is active at loop steps ``t < L_b``; an inactive row keeps its state,
emits zeros, and in backward passes ``dh``/``dc`` through untouched. The reverse
direction reverses each row within its own length (an index gather that is its own
inverse), then runs the same forward loop.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .cells import GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights
from .saved_layout import SAVE_ALL, reference_saved_like


def _reverse_index(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """[T, B] time index that reverses each row within its length (its own inverse)."""
    T, B = x.shape[0], x.shape[1]
    t = torch.arange(T, device=x.device).unsqueeze(1).expand(T, B)
    if lengths is None:
        return T - 1 - t
    L = lengths.to(x.device).unsqueeze(0)
    return torch.where(t < L, L - 1 - t, t)


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


def _active(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[T, B, 1] bool, True where the row is inside its length; None without lengths."""
    if lengths is None:
        return None
    T = x.shape[0]
    return (torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device)).unsqueeze(-1)


def _keep_past_length(m, h_new, c_new, h, c):
    """One step's ``(h', c', y)`` where a row past its length (``m`` [B, 1] False) keeps
    its state and emits zeros; ``m`` None: every row is active."""
    if m is None:
        return h_new, c_new, h_new
    h_new = torch.where(m, h_new, h)
    if c is not None:
        c_new = torch.where(m, c_new, c)
    return h_new, c_new, torch.where(m, h_new, torch.zeros_like(h_new))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[T, B, N] -> [T*B, N]: all steps as the rows of one GEMM."""
    return t.reshape(-1, t.shape[-1])


def _cell_forward(mode, gi, h, c, w: LayerWeights):
    """One step. gi = x @ W_ih^T + b_ih for this step; returns (h', c', saved activations)."""
    gh = F.linear(h, w.w_hh, w.b_hh)
    if mode == LSTM:
        i, f, g, o = (gi + gh).chunk(4, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_new = f * c + i * g
        y = o * c_new.tanh()
        h_new = y if w.w_hr is None else torch.matmul(y, w.w_hr.t())
        return h_new, c_new, (torch.cat([i, f, g, o], 1), y)
    if mode == GRU:
        ir, iz, in_ = gi.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r, z = (ir + hr).sigmoid(), (iz + hz).sigmoid()
        n = (in_ + r * hn).tanh()
        h_new = (1 - z) * n + z * h
        return h_new, None, (torch.cat([r, z, n, hn], 1),)
    a = gi + gh
    h_new = a.tanh() if mode == RNN_TANH else a.relu()
    return h_new, None, ()


_HALF = (torch.float16, torch.bfloat16)


def _fp32(*tensors):
    return tuple(None if t is None else t.float() for t in tensors)


def _like(dtype, *tensors):
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _fwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, need_saved=True):
    """Run one layer and direction.

    x [T, B, I]; h0 [B, P]; c0 [B, H] (LSTM) or None; lengths [B] int64 or None.
    Returns ``y [T, B, P]`` (zero past each row's length), ``h_n [B, P]``, ``c_n [B, H]``
    or None, and ``saved``: the tensors ``_bwd`` needs (in loop order), or () if not
    ``need_saved``.
    """
    if x.dtype in _HALF:
        y, h, c, saved = _fwd(mode, reverse, *_fp32(x, h0, c0), LayerWeights(*_fp32(*w)),
                              lengths, need_saved)
        return (*_like(x.dtype, y, h, c), _like(x.dtype, *saved))
    if reverse:
        index = _reverse_index(x, lengths)
        x = _gather_time(x, index)
    active = _active(x, lengths)
    gi_all = F.linear(x, w.w_ih, w.b_ih)
    h, c = h0, c0
    ys, hs, cs, acts, projs_in = [], [h0], [c0], [], []
    for t in range(x.shape[0]):
        h_new, c_new, saved = _cell_forward(mode, gi_all[t], h, c, w)
        h, c, y_t = _keep_past_length(None if active is None else active[t], h_new, c_new, h, c)
        ys.append(y_t)
        if need_saved:
            hs.append(h)
            cs.append(c)
            acts.append(saved[0] if saved else h)
            if mode == LSTM and w.w_hr is not None:
                projs_in.append(saved[1])
    y = torch.stack(ys)
    if reverse:
        y = _gather_time(y, index)
    if not need_saved:
        return y, h, c, ()
    saved = [torch.stack(acts), torch.stack(hs)]
    if mode == LSTM:
        saved.append(torch.stack(cs))
        if w.w_hr is not None:
            saved.append(torch.stack(projs_in))
    return y, h, c, tuple(saved)


def _cell_backward(mode, g, dc, acts, h_prev, c_prev, c_new, w: LayerWeights):
    """Gate gradients of one step, given dL/dh' = g (and dL/dc' = dc for LSTM).

    Returns (da [B, G*H] for W_ih, da_h [B, G*H] for W_hh, dh_prev [B, P],
    dc_prev [B, H] or None).
    """
    if mode == LSTM:
        i, f, gg, o = acts.chunk(4, 1)
        dy = g if w.w_hr is None else torch.matmul(g, w.w_hr)
        tc = c_new.tanh()
        do = dy * tc
        dc = dc + dy * o * (1 - tc * tc)
        da = torch.cat([dc * gg * i * (1 - i), dc * c_prev * f * (1 - f),
                        dc * i * (1 - gg * gg), do * o * (1 - o)], 1)
        return da, da, torch.matmul(da, w.w_hh), dc * f
    if mode == GRU:
        r, z, n, hn = acts.chunk(4, 1)
        dn = g * (1 - z)
        da_n = dn * (1 - n * n)
        da_r = da_n * hn * r * (1 - r)
        da_z = g * (h_prev - n) * z * (1 - z)
        da = torch.cat([da_r, da_z, da_n], 1)
        da_h = torch.cat([da_r, da_z, da_n * r], 1)
        return da, da_h, g * z + torch.matmul(da_h, w.w_hh), None
    h_new = acts
    da = g * (1 - h_new * h_new) if mode == RNN_TANH else g * (h_new > 0).to(g.dtype)
    return da, da, torch.matmul(da, w.w_hh), None


def _bwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saved, dy, dh_n, dc_n):
    """Explicit backward of ``_fwd``. Gradients are None where the input is None.

    dy [T, B, P]; dh_n [B, P] or None; dc_n [B, H] or None.
    Returns (dx, dh0, dc0, LayerWeights of gradients).
    """
    if x.dtype in _HALF:
        dx, dh, dc, grads = _bwd(mode, reverse, *_fp32(x, h0, c0), LayerWeights(*_fp32(*w)),
                                 lengths, _fp32(*saved), *_fp32(dy, dh_n, dc_n))
        return (*_like(x.dtype, dx, dh, dc), LayerWeights(*_like(x.dtype, *grads)))
    acts_all, hs = saved[0], saved[1]
    cs = saved[2] if mode == LSTM else None
    ys_pre = saved[3] if mode == LSTM and w.w_hr is not None else None
    if reverse:
        index = _reverse_index(x, lengths)
        x = _gather_time(x, index)
        dy = _gather_time(dy, index)
    active = _active(x, lengths)
    T = x.shape[0]
    dh = torch.zeros_like(h0) if dh_n is None else dh_n
    dc = None if mode != LSTM else (torch.zeros_like(c0) if dc_n is None else dc_n)
    das, das_h, dhs = [None] * T, [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        m = None if active is None else active[t]
        g = dh + (dy[t] if m is None else torch.where(m, dy[t], torch.zeros_like(dy[t])))
        da, da_h, dh_prev, dc_prev = _cell_backward(
            mode, g, dc, acts_all[t], hs[t], None if cs is None else cs[t],
            None if cs is None else cs[t + 1], w)
        if m is not None:
            zero = torch.zeros_like(da)
            da, da_h = torch.where(m, da, zero), torch.where(m, da_h, zero)
            dh_prev = torch.where(m, dh_prev, g)
            if dc_prev is not None:
                dc_prev = torch.where(m, dc_prev, dc)
            g = torch.where(m, g, torch.zeros_like(g))
        das[t], das_h[t], dhs[t] = da, da_h, g
        dh, dc = dh_prev, dc_prev
    da_all, dah_all = torch.stack(das), torch.stack(das_h)
    dx = torch.matmul(da_all, w.w_ih)
    if reverse:
        dx = _gather_time(dx, index)
    flat, flat_h = _flat(da_all), _flat(dah_all)
    grads = LayerWeights(
        w_ih=flat.t().mm(_flat(x)),
        w_hh=flat_h.t().mm(_flat(hs[:-1])),
        b_ih=None if w.b_ih is None else flat.sum(0),
        b_hh=None if w.b_hh is None else flat_h.sum(0),
        w_hr=None if ys_pre is None else _flat(torch.stack(dhs)).t().mm(_flat(ys_pre)),
    )
    return dx, dh, dc, grads


def saved_like(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saves=SAVE_ALL):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile); it
    keeps everything whatever ``saves`` asks."""
    return reference_saved_like(mode, x, w)
