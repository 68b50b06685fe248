"""Triton kernels of the recurrence (launched by ``triton.py``; equations in MATH.md).

One layer, one direction, every buffer contiguous and time-major. Sizes: T steps, B batch
rows, H hidden units, P state size (``proj_size`` or H), G gates (4 LSTM, 3 GRU, 1 RNN).
A program owns ``BLOCK_B`` batch rows; ``s`` is the loop step, ``pos`` the time position
it reads and writes (``s`` forward; reversed within each row's length in reverse).

The cell type is the constexpr ``MODE`` (0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu): gates a
mode lacks are never traced. The tile functions are shared by two kinds of kernel:

* step kernels, one launch per step, a grid over (row tiles, unit tiles): large H;
* whole-sequence kernels, one launch per sequence, one program per row tile looping over
  all steps and all unit tiles: small H, where per-step launches would dominate.

Between steps the state goes through global memory (L1/L2-resident at small H):
consecutive steps use different slots (all steps when saving for backward, else two
alternating ones), so no program overwrites a state another one still reads, and the
whole-sequence kernels need only a block barrier per phase.
"""

from __future__ import annotations

import triton
import triton.language as tl

LSTM_MODE, GRU_MODE, TANH_MODE, RELU_MODE = 0, 1, 2, 3


@triton.jit
def _rows_state(s, rows, B, T, len_ptr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr):
    """Per row: active (s inside the row's length) and the time position of step s."""
    if HAS_LENGTHS:
        length = tl.load(len_ptr + rows, mask=rows < B, other=0)
    else:
        length = 0 * rows + T
    active = (s < length) & (rows < B)
    if REVERSE:
        pos = tl.where(s < length, length - 1 - s, s)
    else:
        pos = 0 * rows + s
    return active, pos


@triton.jit
def _fwd_units(s, pid_b, pid_h, B, H, P, T,
               gx_ptr, bhn_ptr, w_ptr, h_ptr, h_out_ptr, c_ptr, c_out_ptr, act_ptr,
               y_ptr, yp_ptr, len_ptr,
               MODE: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
               SAVE: tl.constexpr, PROJ: tl.constexpr, ACC: tl.constexpr,
               PRECISION: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """One step for a tile of rows x hidden units, all gates.

    gx_ptr  [T, B, G*H]  x W_ih^T + b_ih (+ b_hh, but GRU's b_hn)   bhn_ptr [H] (GRU)
    w_ptr   [G*H, P]     W_hh
    h_ptr   [B, P] state before the step, h_out_ptr [B, P] after it (not when PROJ)
    c_ptr / c_out_ptr [B, H] (LSTM)
    act_ptr [B, 4H] saved activations (LSTM i f g o, GRU r z n hn) when SAVE
    y_ptr   [T, B, P] output (not when PROJ)   yp_ptr [B, H] pre-projection output (PROJ)
    """
    G: tl.constexpr = 4 if MODE == 0 else (3 if MODE == 1 else 1)
    rows = tl.cast(pid_b, tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.cast(pid_h, tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    active, pos = _rows_state(s, rows, B, T, len_ptr, HAS_LENGTHS, REVERSE)
    rmask = rows < B
    umask = units < H
    tile = rmask[:, None] & umask[None, :]
    live = active[:, None] & umask[None, :]

    # h W_hh^T for every gate of the tile, one pass over h.
    a0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    a1 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    a2 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    a3 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    gate = tl.cast(H, tl.int64) * P  # W_hh rows between gates: can pass 2^31 elements
    for k0 in range(0, P, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < P
        h = tl.load(h_ptr + rows[:, None] * P + ks[None, :],
                    mask=rmask[:, None] & kmask[None, :], other=0).to(w_ptr.dtype.element_ty)
        wt = w_ptr + units[None, :] * P + ks[:, None]  # [BLOCK_K, BLOCK_H] of W_hh^T
        wmask = kmask[:, None] & umask[None, :]
        a0 = tl.dot(h, tl.load(wt, mask=wmask, other=0), a0, input_precision=PRECISION)
        if G > 1:
            a1 = tl.dot(h, tl.load(wt + gate, mask=wmask, other=0), a1, input_precision=PRECISION)
            a2 = tl.dot(h, tl.load(wt + 2 * gate, mask=wmask, other=0), a2,
                        input_precision=PRECISION)
        if G > 3:
            a3 = tl.dot(h, tl.load(wt + 3 * gate, mask=wmask, other=0), a3,
                        input_precision=PRECISION)

    gx = gx_ptr + (pos[:, None] * B + rows[:, None]) * (G * H) + units[None, :]
    a0 += tl.load(gx, mask=tile, other=0).to(ACC)
    out_off = rows[:, None] * P + units[None, :]  # [B, P] with P == H unless PROJ
    act = act_ptr + rows[:, None] * (4 * H) + units[None, :]
    if MODE == 0:
        i = 1 / (1 + tl.exp(-a0))
        f = 1 / (1 + tl.exp(-(a1 + tl.load(gx + H, mask=tile, other=0).to(ACC))))
        g = 2 / (1 + tl.exp(-2 * (a2 + tl.load(gx + 2 * H, mask=tile, other=0).to(ACC)))) - 1
        o = 1 / (1 + tl.exp(-(a3 + tl.load(gx + 3 * H, mask=tile, other=0).to(ACC))))
        c = tl.load(c_ptr + rows[:, None] * H + units[None, :], mask=tile, other=0).to(ACC)
        c_new = f * c + i * g
        tl.store(c_out_ptr + rows[:, None] * H + units[None, :], tl.where(live, c_new, c), mask=tile)
        h_new = o * (2 / (1 + tl.exp(-2 * c_new)) - 1)
        if SAVE:
            tl.store(act, i, mask=tile)
            tl.store(act + H, f, mask=tile)
            tl.store(act + 2 * H, g, mask=tile)
            tl.store(act + 3 * H, o, mask=tile)
        if PROJ:
            tl.store(yp_ptr + rows[:, None] * H + units[None, :], h_new, mask=tile)
    elif MODE == 1:
        h_prev = tl.load(h_ptr + out_off, mask=tile, other=0).to(ACC)
        r = 1 / (1 + tl.exp(-a0))
        z = 1 / (1 + tl.exp(-(a1 + tl.load(gx + H, mask=tile, other=0).to(ACC))))
        hn = a2 + tl.load(bhn_ptr + units, mask=umask, other=0).to(ACC)[None, :]
        n = 2 / (1 + tl.exp(-2 * (tl.load(gx + 2 * H, mask=tile, other=0).to(ACC) + r * hn))) - 1
        h_new = (1 - z) * n + z * h_prev
        if SAVE:
            tl.store(act, r, mask=tile)
            tl.store(act + H, z, mask=tile)
            tl.store(act + 2 * H, n, mask=tile)
            tl.store(act + 3 * H, hn, mask=tile)
    elif MODE == 2:
        h_new = 2 / (1 + tl.exp(-2 * a0)) - 1
    else:
        h_new = tl.where(a0 < 0, 0, a0)  # NaN stays NaN, as torch's relu
    if not PROJ:
        _emit(h_new, live, tile, out_off, pos, rows, units, B, P, h_ptr, h_out_ptr, y_ptr)


@triton.jit
def _emit(h_new, live, tile, off, pos, rows, cols, B, P, h_ptr, h_out_ptr, y_ptr):
    """Store the new state (the old one on rows past their length) and the output."""
    h_prev = tl.load(h_ptr + off, mask=tile, other=0)
    tl.store(h_out_ptr + off, tl.where(live, h_new.to(h_prev.dtype), h_prev), mask=tile)
    tl.store(y_ptr + (pos[:, None] * B + rows[:, None]) * P + cols[None, :],
             tl.where(live, h_new, 0), mask=tile)


@triton.jit
def _project(s, pid_b, pid_p, B, H, P, T, yp_ptr, w_ptr, h_ptr, h_out_ptr, y_ptr, len_ptr,
             HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr,
             PRECISION: tl.constexpr,
             BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """LSTM projection h' = W_hr yp for a tile of rows x state units.

    yp_ptr [B, H]; w_ptr [P, H] W_hr; h_ptr / h_out_ptr [B, P]; y_ptr [T, B, P].
    """
    rows = tl.cast(pid_b, tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.cast(pid_p, tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    active, pos = _rows_state(s, rows, B, T, len_ptr, HAS_LENGTHS, REVERSE)
    rmask = rows < B
    cmask = cols < P
    acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=ACC)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < H
        yp = tl.load(yp_ptr + rows[:, None] * H + ks[None, :],
                     mask=rmask[:, None] & kmask[None, :], other=0).to(w_ptr.dtype.element_ty)
        wt = tl.load(w_ptr + cols[None, :] * H + ks[:, None],
                     mask=kmask[:, None] & cmask[None, :], other=0)
        acc = tl.dot(yp, wt, acc, input_precision=PRECISION)
    tile = rmask[:, None] & cmask[None, :]
    _emit(acc, active[:, None] & cmask[None, :], tile, rows[:, None] * P + cols[None, :],
          pos, rows, cols, B, P, h_ptr, h_out_ptr, y_ptr)


@triton.jit
def _gate_grads(s, rows, units, active, pos, B, H, P, T,
                dy_ptr, dh_ptr, dyp_ptr, dc_ptr, act_ptr, hs_ptr, cs_ptr,
                MODE: tl.constexpr, PROJ: tl.constexpr, ACC: tl.constexpr):
    """Pre-activation gradients of one step for rows x units (zero on inactive rows).

    dy_ptr [T, B, P]; dh_ptr [B, P] gradient reaching h_s from later steps; dyp_ptr [B, H]
    gradient of the pre-projection output (PROJ); dc_ptr [B, H] gradient reaching c_s;
    act_ptr [B, 4H] at step s; hs_ptr [T+1, B, P]; cs_ptr [T+1, B, H].
    Returns (da_0..da_3, the W_hh-side gradient of gate 2, dc to step s-1).
    """
    tile = (rows < B)[:, None] & (units < H)[None, :]
    live = active[:, None] & (units < H)[None, :]
    if PROJ:
        up = tl.load(dyp_ptr + rows[:, None] * H + units[None, :], mask=tile, other=0).to(ACC)
    else:
        up = tl.load(dh_ptr + rows[:, None] * P + units[None, :], mask=tile, other=0).to(ACC)
        up += tl.load(dy_ptr + (pos[:, None] * B + rows[:, None]) * P + units[None, :],
                      mask=live, other=0).to(ACC)
    act = act_ptr + rows[:, None] * (4 * H) + units[None, :]
    state = rows[:, None] * H + units[None, :]  # [B, H] (== [B, P] unless PROJ)
    zero = tl.zeros([rows.shape[0], units.shape[0]], dtype=ACC)
    d0, d1, d2, d3, dh2, dc_prev = zero, zero, zero, zero, zero, zero
    if MODE == 0:
        i = tl.load(act, mask=tile, other=0).to(ACC)
        f = tl.load(act + H, mask=tile, other=0).to(ACC)
        g = tl.load(act + 2 * H, mask=tile, other=0).to(ACC)
        o = tl.load(act + 3 * H, mask=tile, other=0).to(ACC)
        c_prev = tl.load(cs_ptr + s * B * H + state, mask=tile, other=0).to(ACC)
        c_new = tl.load(cs_ptr + (s + 1) * B * H + state, mask=tile, other=0).to(ACC)
        tc = 2 / (1 + tl.exp(-2 * c_new)) - 1
        dc_in = tl.load(dc_ptr + state, mask=tile, other=0).to(ACC)
        dc = dc_in + up * o * (1 - tc * tc)
        d0 = dc * g * i * (1 - i)
        d1 = dc * c_prev * f * (1 - f)
        d2 = dc * i * (1 - g * g)
        d3 = up * tc * o * (1 - o)
        dh2 = d2
        dc_prev = tl.where(live, dc * f, dc_in)
    elif MODE == 1:
        r = tl.load(act, mask=tile, other=0).to(ACC)
        z = tl.load(act + H, mask=tile, other=0).to(ACC)
        n = tl.load(act + 2 * H, mask=tile, other=0).to(ACC)
        hn = tl.load(act + 3 * H, mask=tile, other=0).to(ACC)
        h_prev = tl.load(hs_ptr + s * B * H + state, mask=tile, other=0).to(ACC)
        d2 = up * (1 - z) * (1 - n * n)
        d0 = d2 * hn * r * (1 - r)
        d1 = up * (h_prev - n) * z * (1 - z)
        dh2 = d2 * r  # b_hn sits inside the reset product
    else:
        h_new = tl.load(hs_ptr + (s + 1) * B * H + state, mask=tile, other=0).to(ACC)
        if MODE == 2:
            d0 = up * (1 - h_new * h_new)
        else:
            d0 = up * (h_new > 0).to(ACC)  # NaN in up spreads, as in the reference
    d0 = tl.where(live, d0, 0)
    d1 = tl.where(live, d1, 0)
    d2 = tl.where(live, d2, 0)
    d3 = tl.where(live, d3, 0)
    dh2 = tl.where(live, dh2, 0)
    return d0, d1, d2, d3, dh2, dc_prev


@triton.jit
def _bwd_cols(s, pid_b, pid_p, B, H, P, T,
              dy_ptr, dh_ptr, dh_out_ptr, dyp_ptr, dc_ptr, dc_out_ptr, act_ptr, hs_ptr, cs_ptr,
              w_ptr, da_ptr, len_ptr,
              MODE: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
              PROJ: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """One reverse step for rows x state columns: dh_{s-1} = da_h W_hh (+ GRU's dh z).

    The gate gradients of all units are recomputed per column tile from the saved
    activations (pointwise, cheap next to the dot); the tile with pid_p == 0 also stores
    them (da_ptr [B, 4H]: LSTM da_i..da_o, GRU da_r da_z da_n da_n*r, RNN da) and dc.
    w_ptr [G*H, P] W_hh; dh_out_ptr [B, P]; dc_out_ptr [B, H].
    """
    G: tl.constexpr = 4 if MODE == 0 else (3 if MODE == 1 else 1)
    rows = tl.cast(pid_b, tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.cast(pid_p, tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    active, pos = _rows_state(s, rows, B, T, len_ptr, HAS_LENGTHS, REVERSE)
    rmask = rows < B
    cmask = cols < P
    writer = rmask & (0 * rows + pid_p == 0)  # a tensor even where pid_p is an int
    acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=ACC)
    # W_hh tiles [BLOCK_K, BLOCK_P]: a 64-bit scalar offset to the tile (gates H * P apart,
    # which can pass 2^31 elements), 32-bit offsets inside it.
    gate = tl.cast(H, tl.int64) * P
    inside = tl.arange(0, BLOCK_K)[:, None] * P + tl.arange(0, BLOCK_P)[None, :]
    for k0 in range(0, H, BLOCK_K):
        units = k0 + tl.arange(0, BLOCK_K)
        umask = units < H
        d0, d1, d2, d3, dh2, dc_prev = _gate_grads(
            s, rows, units, active, pos, B, H, P, T, dy_ptr, dh_ptr, dyp_ptr, dc_ptr, act_ptr,
            hs_ptr, cs_ptr, MODE, PROJ, ACC)
        tile = writer[:, None] & umask[None, :]
        da = da_ptr + rows[:, None] * (4 * H if G > 1 else H) + units[None, :]
        tl.store(da, d0, mask=tile)
        w = w_ptr + (tl.cast(k0, tl.int64) * P + pid_p * BLOCK_P)  # row k0, column cols[0]
        wmask = umask[:, None] & cmask[None, :]
        wt = w_ptr.dtype.element_ty
        acc = tl.dot(d0.to(wt), tl.load(w + inside, mask=wmask, other=0), acc,
                     input_precision=PRECISION)
        if G > 1:
            tl.store(da + H, d1, mask=tile)
            tl.store(da + 2 * H, d2, mask=tile)
            acc = tl.dot(d1.to(wt), tl.load(w + gate + inside, mask=wmask, other=0), acc,
                         input_precision=PRECISION)
            acc = tl.dot(dh2.to(wt), tl.load(w + 2 * gate + inside, mask=wmask, other=0), acc,
                         input_precision=PRECISION)
        if G == 3:
            tl.store(da + 3 * H, dh2, mask=tile)
        if G == 4:
            tl.store(da + 3 * H, d3, mask=tile)
            acc = tl.dot(d3.to(wt), tl.load(w + 3 * gate + inside, mask=wmask, other=0), acc,
                         input_precision=PRECISION)
            tl.store(dc_out_ptr + rows[:, None] * H + units[None, :], dc_prev, mask=tile)

    tile = rmask[:, None] & cmask[None, :]
    off = rows[:, None] * P + cols[None, :]
    g = tl.load(dh_ptr + off, mask=tile, other=0).to(ACC)
    live = active[:, None] & cmask[None, :]
    g += tl.load(dy_ptr + (pos[:, None] * B + rows[:, None]) * P + cols[None, :],
                 mask=live, other=0).to(ACC)
    if MODE == 1:
        acc += g * tl.load(act_ptr + rows[:, None] * (4 * H) + H + cols[None, :],
                           mask=tile, other=0).to(ACC)
    tl.store(dh_out_ptr + off, tl.where(live, acc, g), mask=tile)


@triton.jit
def _project_bwd(s, pid_b, pid_h, B, H, P, T, dy_ptr, dh_ptr, w_ptr, dyp_ptr, g_ptr, len_ptr,
                 HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr,
                 PRECISION: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """LSTM projection backward: dyp = g W_hr with g = dh + dy (zero dy past the length).

    dy_ptr [T, B, P]; dh_ptr [B, P]; w_ptr [P, H] W_hr; dyp_ptr [B, H];
    g_ptr [B, P]: g on active rows, else 0 (for dW_hr), stored by the tile pid_h == 0.
    """
    rows = tl.cast(pid_b, tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.cast(pid_h, tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    active, pos = _rows_state(s, rows, B, T, len_ptr, HAS_LENGTHS, REVERSE)
    rmask = rows < B
    umask = units < H
    acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    inside = tl.arange(0, BLOCK_K)[:, None] * H + tl.arange(0, BLOCK_H)[None, :]  # W_hr tile
    for k0 in range(0, P, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < P
        tile = rmask[:, None] & kmask[None, :]
        live = active[:, None] & kmask[None, :]
        g = tl.load(dh_ptr + rows[:, None] * P + ks[None, :], mask=tile, other=0).to(ACC)
        g += tl.load(dy_ptr + (pos[:, None] * B + rows[:, None]) * P + ks[None, :],
                     mask=live, other=0).to(ACC)
        tl.store(g_ptr + rows[:, None] * P + ks[None, :], tl.where(live, g, 0),
                 mask=tile & (0 * rows + pid_h == 0)[:, None])
        w = tl.load(w_ptr + (tl.cast(k0, tl.int64) * H + pid_h * BLOCK_H) + inside,
                    mask=kmask[:, None] & umask[None, :], other=0)
        acc = tl.dot(g.to(w_ptr.dtype.element_ty), w, acc, input_precision=PRECISION)
    tl.store(dyp_ptr + rows[:, None] * H + units[None, :], acc,
             mask=rmask[:, None] & umask[None, :])


# --- kernels -------------------------------------------------------------------------
# Buffers with a leading slot axis: hs [S, B, P], cs [S, B, H] (S = T+1 when SAVE, else 2),
# acts [T, B, 4H], yp [T or 1, B, H]; backward: dh [2, B, P], dc [2, B, H], da [T, B, 4H],
# gs [T, B, P]. Slot arithmetic lives here so both kernel kinds agree on it.


@triton.jit(do_not_specialize=["T", "s"])
def recurrence_fwd_step_kernel(
        s, B, H, P, T, gx_ptr, bhn_ptr, w_ptr, hs_ptr, cs_ptr, act_ptr, y_ptr, yp_ptr, len_ptr,
        MODE: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
        SAVE: tl.constexpr, PROJ: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step s for the tile (program_id(0) rows, program_id(1) hidden units)."""
    s = tl.cast(s, tl.int64)  # every offset derived from s is 64-bit
    cur = s if SAVE else s % 2
    nxt = s + 1 if SAVE else (s + 1) % 2
    kept = s if SAVE else 0
    _fwd_units(s, tl.program_id(0), tl.program_id(1), B, H, P, T,
               gx_ptr, bhn_ptr, w_ptr, hs_ptr + cur * B * P, hs_ptr + nxt * B * P,
               cs_ptr + cur * B * H, cs_ptr + nxt * B * H, act_ptr + kept * B * 4 * H,
               y_ptr, yp_ptr + kept * B * H, len_ptr,
               MODE, HAS_LENGTHS, REVERSE, SAVE, PROJ, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)


@triton.jit(do_not_specialize=["T", "s"])
def projection_fwd_step_kernel(
        s, B, H, P, T, yp_ptr, w_ptr, hs_ptr, y_ptr, len_ptr,
        HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
        ACC: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """The projection of step s (LSTM, proj_size > 0), after that step's cell kernel."""
    s = tl.cast(s, tl.int64)
    cur = s if SAVE else s % 2
    nxt = s + 1 if SAVE else (s + 1) % 2
    kept = s if SAVE else 0
    _project(s, tl.program_id(0), tl.program_id(1), B, H, P, T, yp_ptr + kept * B * H,
             w_ptr, hs_ptr + cur * B * P, hs_ptr + nxt * B * P, y_ptr, len_ptr,
             HAS_LENGTHS, REVERSE, ACC, PRECISION, BLOCK_B, BLOCK_P, BLOCK_K)


@triton.jit(do_not_specialize=["T"])
def recurrence_fwd_seq_kernel(
        B, H, P, T, gx_ptr, bhn_ptr, w_ptr, wr_ptr, hs_ptr, cs_ptr, act_ptr, y_ptr, yp_ptr,
        len_ptr,
        MODE: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
        SAVE: tl.constexpr, PROJ: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """All T steps for the rows of program_id(0), one launch; wr_ptr [P, H] W_hr (PROJ)."""
    pid_b = tl.program_id(0)
    for t in range(0, T):
        s = tl.cast(t, tl.int64)
        cur = s if SAVE else s % 2
        nxt = s + 1 if SAVE else (s + 1) % 2
        kept = s if SAVE else 0
        yp = yp_ptr + kept * B * H
        for pid_h in range(0, (H + BLOCK_H - 1) // BLOCK_H):
            _fwd_units(s, pid_b, pid_h, B, H, P, T,
                       gx_ptr, bhn_ptr, w_ptr, hs_ptr + cur * B * P, hs_ptr + nxt * B * P,
                       cs_ptr + cur * B * H, cs_ptr + nxt * B * H,
                       act_ptr + kept * B * 4 * H, y_ptr, yp, len_ptr,
                       MODE, HAS_LENGTHS, REVERSE, SAVE, PROJ, ACC, PRECISION,
                       BLOCK_B, BLOCK_H, BLOCK_K)
        tl.debug_barrier()
        if PROJ:
            for pid_p in range(0, (P + BLOCK_H - 1) // BLOCK_H):
                _project(s, pid_b, pid_p, B, H, P, T, yp, wr_ptr, hs_ptr + cur * B * P,
                         hs_ptr + nxt * B * P, y_ptr, len_ptr,
                         HAS_LENGTHS, REVERSE, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            tl.debug_barrier()


@triton.jit(do_not_specialize=["T", "s"])
def recurrence_bwd_step_kernel(
        s, B, H, P, T, dy_ptr, dh_ptr, dyp_ptr, dc_ptr, act_ptr, hs_ptr, cs_ptr, w_ptr, da_ptr,
        len_ptr,
        MODE: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
        PROJ: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """Reverse step s for the tile (program_id(0) rows, program_id(1) state columns)."""
    s = tl.cast(s, tl.int64)
    cur, nxt = s % 2, (s + 1) % 2
    _bwd_cols(s, tl.program_id(0), tl.program_id(1), B, H, P, T,
              dy_ptr, dh_ptr + cur * B * P, dh_ptr + nxt * B * P, dyp_ptr,
              dc_ptr + cur * B * H, dc_ptr + nxt * B * H, act_ptr + s * B * 4 * H, hs_ptr, cs_ptr,
              w_ptr, da_ptr + s * B * (4 * H if MODE < 2 else H), len_ptr,
              MODE, HAS_LENGTHS, REVERSE, PROJ, ACC, PRECISION, BLOCK_B, BLOCK_P, BLOCK_K)


@triton.jit(do_not_specialize=["T", "s"])
def projection_bwd_step_kernel(
        s, B, H, P, T, dy_ptr, dh_ptr, w_ptr, dyp_ptr, gs_ptr, len_ptr,
        HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """The projection backward of step s, before that step's cell kernel."""
    s = tl.cast(s, tl.int64)
    _project_bwd(s, tl.program_id(0), tl.program_id(1), B, H, P, T, dy_ptr,
                 dh_ptr + (s % 2) * B * P, w_ptr, dyp_ptr, gs_ptr + s * B * P, len_ptr,
                 HAS_LENGTHS, REVERSE, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)


@triton.jit(do_not_specialize=["T"])
def recurrence_bwd_seq_kernel(
        B, H, P, T, dy_ptr, dh_ptr, dyp_ptr, dc_ptr, act_ptr, hs_ptr, cs_ptr, w_ptr, wr_ptr,
        da_ptr, gs_ptr, len_ptr,
        MODE: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
        PROJ: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """All T reverse steps for the rows of program_id(0), one launch."""
    pid_b = tl.program_id(0)
    for t in range(0, T):
        s = tl.cast(T - 1 - t, tl.int64)
        cur, nxt = s % 2, (s + 1) % 2
        if PROJ:
            for pid_h in range(0, (H + BLOCK_P - 1) // BLOCK_P):
                _project_bwd(s, pid_b, pid_h, B, H, P, T, dy_ptr, dh_ptr + cur * B * P, wr_ptr,
                             dyp_ptr, gs_ptr + s * B * P, len_ptr,
                             HAS_LENGTHS, REVERSE, ACC, PRECISION, BLOCK_B, BLOCK_P, BLOCK_K)
            tl.debug_barrier()
        for pid_p in range(0, (P + BLOCK_P - 1) // BLOCK_P):
            _bwd_cols(s, pid_b, pid_p, B, H, P, T,
                      dy_ptr, dh_ptr + cur * B * P, dh_ptr + nxt * B * P, dyp_ptr,
                      dc_ptr + cur * B * H, dc_ptr + nxt * B * H, act_ptr + s * B * 4 * H,
                      hs_ptr, cs_ptr, w_ptr, da_ptr + s * B * (4 * H if MODE < 2 else H), len_ptr,
                      MODE, HAS_LENGTHS, REVERSE, PROJ, ACC, PRECISION,
                      BLOCK_B, BLOCK_P, BLOCK_K)
        tl.debug_barrier()
