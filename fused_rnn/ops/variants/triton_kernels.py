"""Triton kernels of the variant recurrences (launched by ``triton.py``; equations in
``layout.py``): LayerNorm LSTM/GRU and zoneout.

One launch per sequence: a program owns ``BLOCK_B`` batch rows and all hidden units and
loops over the T steps, as the recurrence's whole-sequence kernels do. That is what layer
norm needs: the statistics of a row of ``h W_hh^T`` (all G*H values) and of ``c~`` (all H)
are a reduction inside one program, between two block barriers, never across programs.
Each step runs in phases over tiles of units, handing values on through global memory
(L1/L2-resident, each program only touches its own rows):

forward   1. gh = h W_hh^T (raw) for all G*H columns, row sums       (a GEMM)
          2. row variance of gh, centred on the mean                 (LN only)
          3. gates, c~ and c' (LSTM), h' (no LN(c~) needed)           (pointwise)
          4-5. LSTM with LN: variance of c~, then h~ = o tanh(LN(c~)) and h'
backward  A. LSTM with LN: row sums of LN(c~)'s backward
          B. gate gradients: dai (input side), dah (hidden side), the direct parts of
             dh_prev and dc_prev, and the row sums of LN(gh)'s backward
          B2. dgh = LN(gh)'s backward                                 (LN only)
          C. dh_prev += dgh W_hh                                      (a GEMM)

Sizes: T steps, B rows, H hidden units, G gates (4 LSTM, 3 GRU), N = G*H. ``s`` is the
loop step, ``pos`` the time position it reads and writes (as in the recurrence).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..recurrence.triton_kernels import GRU_MODE, LSTM_MODE, _emit, _rows_state  # noqa: F401

LN_EPS = tl.constexpr(1e-5)  # layout.LN_EPS


@triton.jit
def _sigmoid(v):
    return 1 / (1 + tl.exp(-v))


@triton.jit
def _tanh(v):
    return 2 / (1 + tl.exp(-2 * v)) - 1


@triton.jit
def _rows_times_w(a_ptr, K, rows, rmask, w_ptr, n0, N, W_IS_NK: tl.constexpr,
                  ACC: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Columns n0.. of A W^T (``W_IS_NK``: w_ptr [N, K]) or A W (w_ptr [K, N]) for the rows
    ``rows`` of A (a_ptr [B, K]). n0 is 64-bit; W tiles start at a 64-bit offset and index
    inside with 32-bit offsets."""
    ns = n0 + tl.arange(0, BLOCK_N)
    nmask = ns < N
    if W_IS_NK:
        inside = tl.arange(0, BLOCK_N)[None, :] * K + tl.arange(0, BLOCK_K)[:, None]
    else:
        inside = tl.arange(0, BLOCK_K)[:, None] * N + tl.arange(0, BLOCK_N)[None, :]
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :],
                    mask=rmask[:, None] & kmask[None, :], other=0).to(w_ptr.dtype.element_ty)
        if W_IS_NK:
            base = w_ptr + (n0 * K + k0)
        else:
            base = w_ptr + (tl.cast(k0, tl.int64) * N + n0)
        b = tl.load(base + inside, mask=kmask[:, None] & nmask[None, :], other=0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _row_rstd(buf, stride, n, rows, rmask, mean, ACC: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK: tl.constexpr):
    """1 / sqrt(var + eps) of each row's first n values (buf [B, stride]), the variance
    biased and centred on ``mean`` (a second pass: no cancellation of E[v^2] - mean^2)."""
    var = tl.zeros([BLOCK_B], dtype=ACC)
    for c0 in range(0, n, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        m = rmask[:, None] & (cols < n)[None, :]
        v = tl.load(buf + rows[:, None] * stride + cols[None, :], mask=m, other=0).to(ACC)
        d = tl.where(m, v - mean[:, None], 0)
        var += tl.sum(d * d, axis=1)
    return 1 / tl.sqrt(var / n + LN_EPS)


@triton.jit
def _keep(ptr, off, tile, KEEP: tl.constexpr, ACC: tl.constexpr,
          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Zoneout keep coefficients of the tile (zeros without zoneout)."""
    if KEEP:
        k = tl.load(ptr + off, mask=tile, other=0).to(ACC)
    else:
        k = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    return k


@triton.jit
def _hidden_gate(gh, k, rows, units, tile, H, N, bhh_ptr, lnhh_ptr, mean, rstd,
                 LN: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr):
    """Gate k's hidden side of the tile: ln_hh * LN(gh) + b_hh, or gh + b_hh without LN.
    gh [B, N] raw h W_hh^T; with LN and SAVE, LN(gh) replaces it (backward reads it)."""
    cols = k * H + units
    cmask = units < H
    ptr = gh + rows[:, None] * N + cols[None, :]
    v = tl.load(ptr, mask=tile, other=0).to(ACC)
    if LN:
        v = (v - mean[:, None]) * rstd[:, None]
        if SAVE:
            tl.store(ptr, v, mask=tile)
        v = v * tl.load(lnhh_ptr + cols, mask=cmask, other=0).to(ACC)[None, :]
    return v + tl.load(bhh_ptr + cols, mask=cmask, other=0).to(ACC)[None, :]


@triton.jit
def _zoneout_emit(h_new, live, tile, rows, units, pos, B, H, h_ptr, h_out_ptr, y_ptr, kh_ptr,
                  KEEP_H: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """h' = keep_h h + (1 - keep_h) h~, stored as the state and the output."""
    off = rows[:, None] * H + units[None, :]
    if KEEP_H:
        kh = _keep(kh_ptr, (pos[:, None] * B + rows[:, None]) * H + units[None, :], tile,
                   KEEP_H, ACC, BLOCK_B, BLOCK_H)
        h_new = kh * tl.load(h_ptr + off, mask=tile, other=0).to(ACC) + (1 - kh) * h_new
    _emit(h_new, live, tile, off, pos, rows, units, B, H, h_ptr, h_out_ptr, y_ptr)


# --- forward -------------------------------------------------------------------------
# Buffers: gi [T, B, N] input side ln_ih * LN(x W_ih^T) + b_ih (x W_ih^T + b_ih without LN),
# time order; hs [S, B, H], cs [S, B, H] (S = T+1 when SAVE, else 2 alternating slots);
# gh [T or 1, B, N] h W_hh^T, LN(h W_hh^T) when saved with LN; act [T or 1, B, A*H]
# (LSTM i f g o and c~, LN(c~) when saved with LN; GRU r z n ah_n); stat [T, B, 2]
# (1/std of h W_hh^T and of c~); keeps kh, kc [T, B, H] time order; y [T, B, H].


@triton.jit(do_not_specialize=["T"])
def variant_fwd_kernel(
        B, H, T, gi_ptr, w_ptr, bhh_ptr, lnhh_ptr, lncw_ptr, lncb_ptr, kh_ptr, kc_ptr,
        hs_ptr, cs_ptr, gh_ptr, act_ptr, stat_ptr, y_ptr, len_ptr,
        MODE: tl.constexpr, LN: tl.constexpr, KEEP_H: tl.constexpr, KEEP_C: tl.constexpr,
        HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
        ACC: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """All T steps for the rows of program_id(0), one launch. w_ptr [N, H] W_hh;
    bhh_ptr, lnhh_ptr [N]; lncw_ptr, lncb_ptr [H] (LSTM with LN)."""
    G: tl.constexpr = 4 if MODE == 0 else 3
    A: tl.constexpr = 5 if MODE == 0 else 4
    N = G * H
    rows = tl.cast(tl.program_id(0), tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    for t in range(0, T):
        s = tl.cast(t, tl.int64)
        cur = s if SAVE else s % 2
        nxt = s + 1 if SAVE else (s + 1) % 2
        kept = s if SAVE else 0
        active, pos = _rows_state(s, rows, B, T, len_ptr, HAS_LENGTHS, REVERSE)
        h_ptr = hs_ptr + cur * B * H
        h_out = hs_ptr + nxt * B * H
        gh = gh_ptr + kept * B * N
        act = act_ptr + kept * B * (A * H)

        # 1. gh = h W_hh^T, with its row sums for the mean.
        total = tl.zeros([BLOCK_B], dtype=ACC)
        for n0 in range(0, N, BLOCK_H):
            c0 = tl.cast(n0, tl.int64)
            a = _rows_times_w(h_ptr, H, rows, rmask, w_ptr, c0, N, True, ACC, PRECISION,
                              BLOCK_B, BLOCK_H, BLOCK_K)
            cols = c0 + tl.arange(0, BLOCK_H)
            tl.store(gh + rows[:, None] * N + cols[None, :], a,
                     mask=rmask[:, None] & (cols < N)[None, :])
            total += tl.sum(a, axis=1)
        tl.debug_barrier()
        # 2. its variance (LN); a barrier before phase 3 overwrites gh with LN(gh).
        mean = total / N
        rstd = total * 0
        if LN:
            rstd = _row_rstd(gh, N, N, rows, rmask, mean, ACC, BLOCK_B, BLOCK_H)
            if SAVE:
                tl.store(stat_ptr + (s * B + rows) * 2, rstd, mask=rmask)
            tl.debug_barrier()

        # 3. gates and state, per tile of units.
        total_c = tl.zeros([BLOCK_B], dtype=ACC)
        for u0 in range(0, H, BLOCK_H):
            units = tl.cast(u0, tl.int64) + tl.arange(0, BLOCK_H)
            umask = units < H
            tile = rmask[:, None] & umask[None, :]
            live = active[:, None] & umask[None, :]
            off = rows[:, None] * H + units[None, :]
            gi = gi_ptr + (pos[:, None] * B + rows[:, None]) * N + units[None, :]
            keep_off = (pos[:, None] * B + rows[:, None]) * H + units[None, :]
            a_act = act + rows[:, None] * (A * H) + units[None, :]
            ah0 = _hidden_gate(gh, 0, rows, units, tile, H, N, bhh_ptr, lnhh_ptr, mean, rstd,
                               LN, SAVE, ACC)
            ah1 = _hidden_gate(gh, 1, rows, units, tile, H, N, bhh_ptr, lnhh_ptr, mean, rstd,
                               LN, SAVE, ACC)
            ah2 = _hidden_gate(gh, 2, rows, units, tile, H, N, bhh_ptr, lnhh_ptr, mean, rstd,
                               LN, SAVE, ACC)
            gi0 = tl.load(gi, mask=tile, other=0).to(ACC)
            gi1 = tl.load(gi + H, mask=tile, other=0).to(ACC)
            gi2 = tl.load(gi + 2 * H, mask=tile, other=0).to(ACC)
            if MODE == 0:
                ah3 = _hidden_gate(gh, 3, rows, units, tile, H, N, bhh_ptr, lnhh_ptr, mean,
                                   rstd, LN, SAVE, ACC)
                gi3 = tl.load(gi + 3 * H, mask=tile, other=0).to(ACC)
                i = _sigmoid(gi0 + ah0)
                f = _sigmoid(gi1 + ah1)
                g = _tanh(gi2 + ah2)
                o = _sigmoid(gi3 + ah3)
                c = tl.load(cs_ptr + cur * B * H + off, mask=tile, other=0).to(ACC)
                c_tilde = f * c + i * g
                kc = _keep(kc_ptr, keep_off, tile, KEEP_C, ACC, BLOCK_B, BLOCK_H)
                tl.store(cs_ptr + nxt * B * H + off,
                         tl.where(live, kc * c + (1 - kc) * c_tilde, c), mask=tile)
                if SAVE:
                    tl.store(a_act, i, mask=tile)
                    tl.store(a_act + H, f, mask=tile)
                    tl.store(a_act + 2 * H, g, mask=tile)
                if SAVE or LN:  # LN: phase 5 reads them back
                    tl.store(a_act + 3 * H, o, mask=tile)
                    tl.store(a_act + 4 * H, c_tilde, mask=tile)
                if LN:
                    total_c += tl.sum(tl.where(tile, c_tilde, 0), axis=1)
                else:
                    _zoneout_emit(o * _tanh(c_tilde), live, tile, rows, units, pos, B, H,
                                  h_ptr, h_out, y_ptr, kh_ptr, KEEP_H, ACC, BLOCK_B, BLOCK_H)
            else:
                r = _sigmoid(gi0 + ah0)
                z = _sigmoid(gi1 + ah1)
                n = _tanh(gi2 + r * ah2)
                h_prev = tl.load(h_ptr + off, mask=tile, other=0).to(ACC)
                if SAVE:
                    tl.store(a_act, r, mask=tile)
                    tl.store(a_act + H, z, mask=tile)
                    tl.store(a_act + 2 * H, n, mask=tile)
                    tl.store(a_act + 3 * H, ah2, mask=tile)
                _zoneout_emit((1 - z) * n + z * h_prev, live, tile, rows, units, pos, B, H,
                              h_ptr, h_out, y_ptr, kh_ptr, KEEP_H, ACC, BLOCK_B, BLOCK_H)

        if MODE == 0 and LN:
            # 4. the statistics of c~, 5. h~ = o tanh(ln_c_weight LN(c~) + ln_c_bias).
            tl.debug_barrier()
            mean_c = total_c / H
            rstd_c = _row_rstd(act + 4 * H, A * H, H, rows, rmask, mean_c, ACC, BLOCK_B,
                               BLOCK_H)
            if SAVE:
                tl.store(stat_ptr + (s * B + rows) * 2 + 1, rstd_c, mask=rmask)
            tl.debug_barrier()
            for u0 in range(0, H, BLOCK_H):
                units = tl.cast(u0, tl.int64) + tl.arange(0, BLOCK_H)
                umask = units < H
                tile = rmask[:, None] & umask[None, :]
                live = active[:, None] & umask[None, :]
                a_act = act + rows[:, None] * (A * H) + units[None, :]
                o = tl.load(a_act + 3 * H, mask=tile, other=0).to(ACC)
                xc = (tl.load(a_act + 4 * H, mask=tile, other=0).to(ACC)
                      - mean_c[:, None]) * rstd_c[:, None]
                if SAVE:
                    tl.store(a_act + 4 * H, xc, mask=tile)
                wc = tl.load(lncw_ptr + units, mask=umask, other=0).to(ACC)[None, :]
                bc = tl.load(lncb_ptr + units, mask=umask, other=0).to(ACC)[None, :]
                _zoneout_emit(o * _tanh(wc * xc + bc), live, tile, rows, units, pos, B, H,
                              h_ptr, h_out, y_ptr, kh_ptr, KEEP_H, ACC, BLOCK_B, BLOCK_H)
        tl.debug_barrier()


# --- backward ------------------------------------------------------------------------
# Buffers as the forward's saved ones, plus: dy [T, B, H] time order; dh, dc [2, B, H]
# alternating slots (the gradient reaching the state of step s, and that of step s-1);
# dai [T, B, N] gradient of the input side, time order; dah [T, B, N] of the hidden side
# ah, loop order; dgh [T, B, N] of h W_hh^T, loop order (dah itself without LN);
# du [T, B, H] of ln_c_weight LN(c~) + ln_c_bias (LSTM with LN), loop order.


@triton.jit
def _upstream(s, rows, units, pos, tile, live, B, H, dy_ptr, dh_ptr, kh_ptr,
              KEEP_H: tl.constexpr, ACC: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """g = dL/dh' of step s, keep_h, and dL/dh~ = (1 - keep_h) g (zero on inactive rows)."""
    t_off = (pos[:, None] * B + rows[:, None]) * H + units[None, :]
    g = tl.load(dh_ptr + rows[:, None] * H + units[None, :], mask=tile, other=0).to(ACC)
    g += tl.load(dy_ptr + t_off, mask=live, other=0).to(ACC)
    kh = _keep(kh_ptr, t_off, tile, KEEP_H, ACC, BLOCK_B, BLOCK_H)
    return g, kh, tl.where(live, (1 - kh) * g, 0)


@triton.jit
def _cell_norm_grad(dht, o, xc, lncw_ptr, lncb_ptr, units, umask, ACC: tl.constexpr):
    """LSTM with LN: du = dL/du for u = ln_c_weight LN(c~) + ln_c_bias (h~ = o tanh(u)),
    ln_c_weight and tanh(u) of the tile, given dL/dh~ and xc = LN(c~)."""
    wc = tl.load(lncw_ptr + units, mask=umask, other=0).to(ACC)[None, :]
    tu = _tanh(wc * xc + tl.load(lncb_ptr + units, mask=umask, other=0).to(ACC)[None, :])
    return dht * o * (1 - tu * tu), wc, tu


@triton.jit(do_not_specialize=["T"])
def variant_bwd_kernel(
        B, H, T, dy_ptr, dh_ptr, dc_ptr, hs_ptr, cs_ptr, gh_ptr, act_ptr, stat_ptr,
        w_ptr, lnhh_ptr, lncw_ptr, lncb_ptr, kh_ptr, kc_ptr, dai_ptr, dah_ptr, dgh_ptr,
        du_ptr, len_ptr,
        MODE: tl.constexpr, LN: tl.constexpr, KEEP_H: tl.constexpr, KEEP_C: tl.constexpr,
        HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
        ACC: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """All T reverse steps for the rows of program_id(0), one launch."""
    G: tl.constexpr = 4 if MODE == 0 else 3
    A: tl.constexpr = 5 if MODE == 0 else 4
    N = G * H
    rows = tl.cast(tl.program_id(0), tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    for t in range(0, T):
        s = tl.cast(T - 1 - t, tl.int64)
        cur, nxt = s % 2, (s + 1) % 2
        active, pos = _rows_state(s, rows, B, T, len_ptr, HAS_LENGTHS, REVERSE)
        dh_in = dh_ptr + cur * B * H
        dh_out = dh_ptr + nxt * B * H
        act = act_ptr + s * B * (A * H)
        gh = gh_ptr + s * B * N
        dah = dah_ptr + s * B * N
        dgh = dgh_ptr + s * B * N
        zero = tl.zeros([BLOCK_B], dtype=ACC)

        # A. LSTM with LN: the row means of dx = du * ln_c_weight and of dx * LN(c~).
        m1c, m2c, rstd_c = zero, zero, zero
        if MODE == 0 and LN:
            for u0 in range(0, H, BLOCK_H):
                units = tl.cast(u0, tl.int64) + tl.arange(0, BLOCK_H)
                umask = units < H
                tile = rmask[:, None] & umask[None, :]
                live = active[:, None] & umask[None, :]
                _, _, dht = _upstream(s, rows, units, pos, tile, live, B, H, dy_ptr, dh_in,
                                      kh_ptr, KEEP_H, ACC, BLOCK_B, BLOCK_H)
                a_act = act + rows[:, None] * (A * H) + units[None, :]
                xc = tl.load(a_act + 4 * H, mask=tile, other=0).to(ACC)
                du, wc, _ = _cell_norm_grad(dht, tl.load(a_act + 3 * H, mask=tile, other=0).to(ACC),
                                            xc, lncw_ptr, lncb_ptr, units, umask, ACC)
                tl.store(du_ptr + s * B * H + rows[:, None] * H + units[None, :], du, mask=tile)
                m1c += tl.sum(du * wc, axis=1)
                m2c += tl.sum(du * wc * xc, axis=1)
            m1c = m1c / H
            m2c = m2c / H
            rstd_c = tl.load(stat_ptr + (s * B + rows) * 2 + 1, mask=rmask, other=0).to(ACC)

        # B. gate gradients, direct parts of dh_prev and dc_prev, LN(gh) backward's sums.
        m1, m2 = zero, zero
        for u0 in range(0, H, BLOCK_H):
            units = tl.cast(u0, tl.int64) + tl.arange(0, BLOCK_H)
            umask = units < H
            tile = rmask[:, None] & umask[None, :]
            live = active[:, None] & umask[None, :]
            off = rows[:, None] * H + units[None, :]
            g, kh, dht = _upstream(s, rows, units, pos, tile, live, B, H, dy_ptr, dh_in,
                                   kh_ptr, KEEP_H, ACC, BLOCK_B, BLOCK_H)
            a_act = act + rows[:, None] * (A * H) + units[None, :]
            a0 = tl.load(a_act, mask=tile, other=0).to(ACC)
            a1 = tl.load(a_act + H, mask=tile, other=0).to(ACC)
            a2 = tl.load(a_act + 2 * H, mask=tile, other=0).to(ACC)
            a3 = tl.load(a_act + 3 * H, mask=tile, other=0).to(ACC)
            if MODE == 0:
                i, f, gg, o = a0, a1, a2, a3
                c_prev = tl.load(cs_ptr + s * B * H + off, mask=tile, other=0).to(ACC)
                dcp = tl.load(dc_ptr + cur * B * H + off, mask=tile, other=0).to(ACC)
                kc = _keep(kc_ptr, (pos[:, None] * B + rows[:, None]) * H + units[None, :],
                           tile, KEEP_C, ACC, BLOCK_B, BLOCK_H)
                dct = (1 - kc) * dcp
                x4 = tl.load(a_act + 4 * H, mask=tile, other=0).to(ACC)
                if LN:  # x4 = LN(c~); the sums are phase A's
                    du, wc, tu = _cell_norm_grad(dht, o, x4, lncw_ptr, lncb_ptr, units, umask,
                                                 ACC)
                    dct += rstd_c[:, None] * (du * wc - m1c[:, None] - x4 * m2c[:, None])
                else:
                    tu = _tanh(x4)
                    dct += dht * o * (1 - tu * tu)
                d0 = tl.where(live, dct * gg * i * (1 - i), 0)
                d1 = tl.where(live, dct * c_prev * f * (1 - f), 0)
                d2 = tl.where(live, dct * i * (1 - gg * gg), 0)
                d3 = tl.where(live, dht * tu * o * (1 - o), 0)
                h2 = d2
                tl.store(dc_ptr + nxt * B * H + off, tl.where(live, kc * dcp + dct * f, dcp),
                         mask=tile)
                tl.store(dh_out + off, tl.where(live, kh * g, g), mask=tile)
            else:
                r, z, n, ahn = a0, a1, a2, a3
                h_prev = tl.load(hs_ptr + s * B * H + off, mask=tile, other=0).to(ACC)
                dan = dht * (1 - z) * (1 - n * n)
                d0 = tl.where(live, dan * ahn * r * (1 - r), 0)
                d1 = tl.where(live, dht * (h_prev - n) * z * (1 - z), 0)
                d2 = tl.where(live, dan, 0)
                h2 = d2 * r  # b_hh's n part sits inside the reset product
                d3 = d2
                tl.store(dh_out + off, tl.where(live, kh * g + dht * z, g), mask=tile)
            di = dai_ptr + (pos[:, None] * B + rows[:, None]) * N + units[None, :]
            tl.store(di, d0, mask=tile)
            tl.store(di + H, d1, mask=tile)
            tl.store(di + 2 * H, d2, mask=tile)
            dh_ = dah + rows[:, None] * N + units[None, :]
            tl.store(dh_, d0, mask=tile)
            tl.store(dh_ + H, d1, mask=tile)
            tl.store(dh_ + 2 * H, h2, mask=tile)
            if MODE == 0:
                tl.store(di + 3 * H, d3, mask=tile)
                tl.store(dh_ + 3 * H, d3, mask=tile)
            if LN:
                xh = gh + rows[:, None] * N + units[None, :]
                m1, m2 = _ln_sums(d0, xh, lnhh_ptr, units, umask, tile, m1, m2, ACC)
                m1, m2 = _ln_sums(d1, xh + H, lnhh_ptr + H, units, umask, tile, m1, m2, ACC)
                m1, m2 = _ln_sums(h2, xh + 2 * H, lnhh_ptr + 2 * H, units, umask, tile, m1, m2,
                                  ACC)
                if MODE == 0:
                    m1, m2 = _ln_sums(d3, xh + 3 * H, lnhh_ptr + 3 * H, units, umask, tile,
                                      m1, m2, ACC)
        tl.debug_barrier()

        # B2. dgh = rstd (dx - mean(dx) - LN(gh) mean(dx LN(gh))), dx = dah * ln_hh.
        if LN:
            m1 = m1 / N
            m2 = m2 / N
            rstd = tl.load(stat_ptr + (s * B + rows) * 2, mask=rmask, other=0).to(ACC)
            for n0 in range(0, N, BLOCK_H):
                cols = tl.cast(n0, tl.int64) + tl.arange(0, BLOCK_H)
                cmask = cols < N
                tile = rmask[:, None] & cmask[None, :]
                off = rows[:, None] * N + cols[None, :]
                dx = tl.load(dah + off, mask=tile, other=0).to(ACC) * tl.load(
                    lnhh_ptr + cols, mask=cmask, other=0).to(ACC)[None, :]
                xh = tl.load(gh + off, mask=tile, other=0).to(ACC)
                d = rstd[:, None] * (dx - m1[:, None] - xh * m2[:, None])
                tl.store(dgh + off, tl.where(active[:, None], d, 0), mask=tile)
            tl.debug_barrier()

        # C. dh_prev += dgh W_hh.
        for c0 in range(0, H, BLOCK_H):
            cols = tl.cast(c0, tl.int64) + tl.arange(0, BLOCK_H)
            acc = _rows_times_w(dgh, N, rows, rmask, w_ptr, tl.cast(c0, tl.int64), H, False, ACC,
                                PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            tile = rmask[:, None] & (cols < H)[None, :]
            off = rows[:, None] * H + cols[None, :]
            prev = tl.load(dh_out + off, mask=tile, other=0)
            tl.store(dh_out + off, prev + tl.where(active[:, None], acc, 0), mask=tile)
        tl.debug_barrier()


@triton.jit
def _ln_sums(d, xh_ptr, ln_ptr, units, umask, tile, m1, m2, ACC: tl.constexpr):
    """Row sums of dx = d * ln_hh and of dx * LN(gh) for one gate's tile."""
    dx = d * tl.load(ln_ptr + units, mask=umask, other=0).to(ACC)[None, :]
    xh = tl.load(xh_ptr, mask=tile, other=0).to(ACC)
    return m1 + tl.sum(dx, axis=1), m2 + tl.sum(dx * xh, axis=1)
