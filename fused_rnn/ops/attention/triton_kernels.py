"""Triton kernels of fused attention (launchers in ``triton.py``; math in MATH.md, Attention).

Every kernel works on one batch row ``b`` and a block of query rows, key rows or both, and
loops over what it does not own. Sizes: q [B, Tq, D], k [B, Tk, D], x (the values)
[B, Tk, Dv], w (additive ``v``) [D], valid [B, Tk] uint8 (1 = attend), lse and delta
[B, Tq]; all contiguous. ``ADDITIVE``: e = w . tanh(q + k), else e = scale * q . k, with
``scale`` read from scale_ptr [1] (a Python float argument would be fp32, too coarse for
fp64 inputs).

Offsets: one batch's [Tq, Tk] weights or [Tk, D] keys can pass 2^31 elements, so no offset
is a 32-bit product of a row index and a row length (tests/test_large_index.py). ``_rows``
takes int64 row indices, or the rows inside a tile (``tl.arange``) with ``base`` pointing
at the tile's first row: a 64-bit scalar offset, and 32-bit offsets inside the tile (below
its rows times one row). A program's own tile (its query block; its key block in
``_attn_bwd_dkx``) is a tile start. The tiles it loops over take what compiles without
spills (tests/test_attention_triton_compile.py): int64 rows, but a tile start for the keys
of the additive score. (In-tile offsets do not depend on the loop, so the compiler hoists
them and holds them across it: ~50 more registers and spills in ``_attn_fwd`` with tl.dot;
int64 rows made the additive ``_attn_fwd`` and ``_attn_bwd_dq`` spill.)

Keys that are masked or past Tk are never read (their loads are masked to 0), so NaN or inf
there cannot leak. A row with no valid key keeps m = -inf and s = 0: it gets lse = -inf,
zero context, zero weights and zero gradients. A NaN score at a valid key makes s NaN for
its row, which reaches everything computed from that row.

``USE_DOT`` picks ``tl.dot`` for the block products (tiles of at least 16); without it they
are broadcast-and-sum over a 3-D tile, which serves single-query rows (decoder steps, where
a 16-row tile would be mostly padding), fp64, and the additive score (tanh is elementwise
per (query, key, feature), so it has no matrix product anyway).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # tl has no tanh common to the Triton versions we support; exp(-2|x|) never overflows.
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _mm_nt(a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """a [M, K] @ b[N, K]^T -> [M, N] in ACC."""
    if USE_DOT:
        return tl.dot(a, tl.trans(b.to(a.dtype)), input_precision=PRECISION, out_dtype=ACC)
    else:
        return tl.sum(a.to(ACC)[:, None, :] * b.to(ACC)[None, :, :], axis=2)


@triton.jit
def _mm_nn(a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """a [M, K] @ b [K, N] -> [M, N] in ACC; ``a`` (fp32 probabilities) takes b's dtype for
    tl.dot, as flash attention does for half inputs."""
    if USE_DOT:
        return tl.dot(a.to(b.dtype), b, input_precision=PRECISION, out_dtype=ACC)
    else:
        return tl.sum(a.to(ACC)[:, :, None] * b.to(ACC)[None, :, :], axis=1)


@triton.jit
def _mm_tn(a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """a[K, M]^T @ b [K, N] -> [M, N] in ACC."""
    if USE_DOT:
        return tl.dot(tl.trans(a.to(b.dtype)), b, input_precision=PRECISION, out_dtype=ACC)
    else:
        return tl.sum(a.to(ACC)[:, :, None] * b.to(ACC)[:, None, :], axis=0)


@triton.jit
def _rows(base, offs_r, r_ok, offs_c, c_ok, n_cols):
    """Tile [R, C] of a row-major [*, n_cols] matrix; masked entries read as 0. ``offs_r``:
    int64 row indices, or the rows inside a tile (tl.arange) whose first row ``base`` points
    at (see the module docstring: one batch's matrix can pass 2^31 elements)."""
    return tl.load(base + offs_r[:, None] * n_cols + offs_c[None, :],
                   mask=r_ok[:, None] & c_ok[None, :], other=0.0)


@triton.jit
def _keys_ok(valid_row, offs_n, n_end, HAS_MASK: tl.constexpr):
    """[N] bool: key j is below ``n_end`` and, with a mask, valid."""
    ok = offs_n < n_end
    if HAS_MASK:
        ok = ok & (tl.load(valid_row + offs_n, mask=ok, other=0) != 0)
    return ok


@triton.jit
def _inner(a_base, offs_m, m_ok, b_base, offs_n, n_ok, K,
           USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[M, N] dot products of rows of a [*, K] with rows of b [*, K], K in chunks."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = _rows(a_base, offs_m, m_ok, offs_k, k_ok, K)
        b = _rows(b_base, offs_n, n_ok, offs_k, k_ok, K)
        acc += _mm_nt(a, b, USE_DOT, PRECISION, ACC)
    return acc


@triton.jit
def _scores(q_base, offs_m, m_ok, k_base, offs_n, n_ok, w_ptr, D, scale,
            ADDITIVE: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
            ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_K: tl.constexpr):
    """Raw scores [M, N] (not masked)."""
    if ADDITIVE:
        e = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < D
            q = _rows(q_base, offs_m, m_ok, offs_k, k_ok, D).to(ACC)
            k = _rows(k_base, offs_n, n_ok, offs_k, k_ok, D).to(ACC)
            w = tl.load(w_ptr + offs_k, mask=k_ok, other=0.0).to(ACC)
            e += tl.sum(w[None, None, :] * _tanh(q[:, None, :] + k[None, :, :]), axis=2)
        return e
    else:
        return scale * _inner(q_base, offs_m, m_ok, k_base, offs_n, n_ok, D, USE_DOT, PRECISION,
                              ACC, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _tile(n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's output rows and columns: program_id(0) = row block * column blocks +
    column block, so that the programs of one row block are adjacent and share its inputs
    in L2. Returns (row block, row offsets [R], column block, column offsets [C])."""
    n_cb = tl.cdiv(n_cols, BLOCK_C)
    rb = tl.program_id(0) // n_cb
    cb = tl.program_id(0) % n_cb
    return rb, rb * BLOCK_R + tl.arange(0, BLOCK_R), cb, cb * BLOCK_C + tl.arange(0, BLOCK_C)


@triton.jit
def _attn_fwd(q_ptr, k_ptr, x_ptr, w_ptr, valid_ptr, out_ptr, lse_ptr, m_ptr, s_ptr,
              Tq, Tk, D, Dv, keys_per_split, n_split, scale_ptr,
              ADDITIVE: tl.constexpr, HAS_MASK: tl.constexpr, SPLIT: tl.constexpr,
              USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              BLOCK_C: tl.constexpr):
    """Grid (query blocks x value-column blocks, B, n_split): online softmax over the keys
    of one split. Without SPLIT: out [B, Tq, Dv] = context, lse [B, Tq]. With SPLIT: out
    [B, Tq, n_split, Dv] fp32/fp64 = unnormalised context, m and s [B, Tq, n_split]."""
    rb, offs_m, cb, offs_c = _tile(Dv, BLOCK_M, BLOCK_C)
    m_ok = offs_m < Tq
    c_ok = offs_c < Dv
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    scale = tl.load(scale_ptr)
    q_tile = q_ptr + (b * Tq + rb * BLOCK_M) * D
    k_base = k_ptr + b * Tk * D
    x_base = x_ptr + b * Tk * Dv
    n_start = split * keys_per_split
    n_end = tl.minimum(Tk, n_start + keys_per_split)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    s_i = tl.zeros((BLOCK_M,), dtype=ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        ok = _keys_ok(valid_ptr + b * Tk, offs_n, n_end, HAS_MASK)
        keys = offs_n.to(tl.int64)
        if ADDITIVE:  # a tile start; int64 rows spill here (module docstring)
            k_tile, k_rows = k_ptr + (b * Tk + n0) * D, tl.arange(0, BLOCK_N)
        else:
            k_tile, k_rows = k_base, keys
        e = _scores(q_tile, tl.arange(0, BLOCK_M), m_ok, k_tile, k_rows, ok, w_ptr, D, scale,
                    ADDITIVE, USE_DOT, PRECISION, ACC, BLOCK_M, BLOCK_N, BLOCK_K)
        e = tl.where(ok[None, :], e, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(e, axis=1))
        # While a row has seen no valid key, m = -inf: subtract 0 instead (-inf - -inf = NaN).
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(e - m_sub[:, None])
        rescale = tl.exp(m_i - m_sub)
        s_i = s_i * rescale + tl.sum(p, axis=1)
        x = _rows(x_base, keys, ok, offs_c, c_ok, Dv)
        acc = acc * rescale[:, None] + _mm_nn(p, x, USE_DOT, PRECISION, ACC)
        m_i = m_new

    rows = b * Tq + offs_m
    if SPLIT:
        part = rows * n_split + split
        tl.store(out_ptr + part[:, None] * Dv + offs_c[None, :], acc,
                 mask=m_ok[:, None] & c_ok[None, :])
        if cb == 0:
            tl.store(m_ptr + part, m_i, mask=m_ok)
            tl.store(s_ptr + part, s_i, mask=m_ok)
    else:
        ctx = acc / tl.where(s_i == 0, 1.0, s_i)[:, None]
        tl.store(out_ptr + rows[:, None] * Dv + offs_c[None, :],
                 ctx.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])
        if cb == 0:
            log_s = tl.log(tl.where(s_i == 0, 1.0, s_i))
            tl.store(lse_ptr + rows, tl.where(s_i == 0, float("-inf"), m_i + log_s), mask=m_ok)


@triton.jit
def _attn_combine(part_ptr, m_ptr, s_ptr, out_ptr, lse_ptr, n_split, Dv,
                  ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (B * Tq, value-column blocks): merges the n_split partial (m, s, context) of
    one query row with the online-softmax rescaling (flash-decoding)."""
    row = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    s_in = offs_s < n_split
    m = tl.load(m_ptr + row * n_split + offs_s, mask=s_in, other=float("-inf"))
    s = tl.load(s_ptr + row * n_split + offs_s, mask=s_in, other=0.0)
    m_max = tl.max(m, axis=0)
    f = tl.exp(m - tl.where(m_max == float("-inf"), 0.0, m_max))
    total = tl.sum(f * s, axis=0)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < Dv
    part = _rows(part_ptr + row * n_split * Dv, offs_s, s_in, offs_c, c_ok, Dv)
    ctx = tl.sum(f[:, None] * part, axis=0) / tl.where(total == 0, 1.0, total)
    tl.store(out_ptr + row * Dv + offs_c, ctx.to(out_ptr.dtype.element_ty), mask=c_ok)
    if cb == 0:
        tl.store(lse_ptr + row, tl.where(total == 0, float("-inf"),
                                             m_max + tl.log(tl.where(total == 0, 1.0, total))))


@triton.jit
def _attn_weights(q_ptr, k_ptr, w_ptr, valid_ptr, lse_ptr, out_ptr, Tq, Tk, D, scale_ptr,
                  ADDITIVE: tl.constexpr, HAS_MASK: tl.constexpr, USE_DOT: tl.constexpr,
                  PRECISION: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (query blocks, B, key blocks): weights [B, Tq, Tk] = exp(e - lse) from the
    forward's lse; 0 at masked keys and in rows with no valid key."""
    b = tl.program_id(1).to(tl.int64)
    scale = tl.load(scale_ptr)
    m0 = tl.program_id(0) * BLOCK_M
    n0 = tl.program_id(2) * BLOCK_N
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Tq
    offs_n = n0 + tl.arange(0, BLOCK_N)
    ok = _keys_ok(valid_ptr + b * Tk, offs_n, Tk, HAS_MASK)
    lse = tl.load(lse_ptr + b * Tq + offs_m, mask=m_ok, other=float("-inf"))
    e = _scores(q_ptr + (b * Tq + m0) * D, tl.arange(0, BLOCK_M), m_ok,
                k_ptr + (b * Tk + n0) * D, tl.arange(0, BLOCK_N), ok, w_ptr, D,
                scale, ADDITIVE, USE_DOT, PRECISION, ACC, BLOCK_M, BLOCK_N, BLOCK_K)
    live = ok[None, :] & (lse != float("-inf"))[:, None]
    p = tl.where(live, tl.exp(e - lse[:, None]), 0.0)
    tl.store(out_ptr + (b * Tq + offs_m)[:, None] * Tk + offs_n[None, :],
             p.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_n < Tk)[None, :])


@triton.jit
def _probs_and_grads(q_base, k_base, x_base, w_ptr, g_base, dw_base, lse, delta,
                     offs_m, m_ok, offs_n, ok, cols_n, Tk, D, Dv, scale,
                     ADDITIVE: tl.constexpr, HAS_DW: tl.constexpr, USE_DOT: tl.constexpr,
                     PRECISION: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Recomputed weights a [M, N] and score gradients de = a (g . x_j + dw - delta).
    Rows as ``_rows`` takes them: offs_m of q, g and dw, offs_n of k and x; cols_n: the
    keys' columns of dw [*, Tk] (32-bit, below Tk)."""
    e = _scores(q_base, offs_m, m_ok, k_base, offs_n, ok, w_ptr, D, scale, ADDITIVE,
                USE_DOT, PRECISION, ACC, BLOCK_M, BLOCK_N, BLOCK_K)
    live = ok[None, :] & (lse != float("-inf"))[:, None]
    a = tl.where(live, tl.exp(e - lse[:, None]), 0.0)
    da = _inner(g_base, offs_m, m_ok, x_base, offs_n, ok, Dv, USE_DOT, PRECISION, ACC,
                BLOCK_M, BLOCK_N, BLOCK_K)
    if HAS_DW:
        da += _rows(dw_base, offs_m, m_ok, cols_n, ok, Tk).to(ACC)
    # where, not a product with a = 0: delta is NaN in a NaN row, and a masked key's
    # gradient must stay 0 even there (the reference never reads it).
    de = tl.where(live, a * (da - delta[:, None]), 0.0)
    return a, de


@triton.jit
def _attn_bwd_dkx(q_ptr, k_ptr, x_ptr, w_ptr, valid_ptr, lse_ptr, delta_ptr, g_ptr, dw_ptr,
                  dk_ptr, dx_ptr, dwp_ptr, Tq, Tk, D, Dv, scale_ptr,
                  ADDITIVE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DW: tl.constexpr,
                  USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    """Grid (key blocks x column blocks, B): dk [B, Tk, D] and dx [B, Tk, Dv] of one key
    block's columns [c, c + BLOCK_C), summed over all queries; additive: this block's part
    of dw in dwp [B, key blocks, D]. Each program owns its outputs: no atomics; the price
    is recomputing the scores once per column block."""
    nb, offs_n, _, offs_c = _tile(tl.maximum(D, Dv), BLOCK_N, BLOCK_C)
    b = tl.program_id(1).to(tl.int64)
    scale = tl.load(scale_ptr)
    ok = _keys_ok(valid_ptr + b * Tk, offs_n, Tk, HAS_MASK)
    cd_ok = offs_c < D
    cx_ok = offs_c < Dv
    q_base = q_ptr + b * Tq * D
    g_base = g_ptr + b * Tq * Dv
    keys = b * Tk + nb * BLOCK_N
    k_tile = k_ptr + keys * D
    in_tile = tl.arange(0, BLOCK_N)
    if ADDITIVE:
        kc = _rows(k_tile, in_tile, ok, offs_c, cd_ok, D).to(ACC)
        wc = tl.load(w_ptr + offs_c, mask=cd_ok, other=0.0).to(ACC)
        dwp = tl.zeros((BLOCK_C,), dtype=ACC)
    dk = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC)
    dx = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC)
    for m0 in range(0, Tq, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < Tq
        lse = tl.load(lse_ptr + b * Tq + offs_m, mask=m_ok, other=float("-inf"))
        delta = tl.load(delta_ptr + b * Tq + offs_m, mask=m_ok, other=0.0)
        rows = offs_m.to(tl.int64)
        a, de = _probs_and_grads(q_base, k_tile, x_ptr + keys * Dv, w_ptr, g_base,
                                 dw_ptr + b * Tq * Tk, lse, delta, rows, m_ok, in_tile, ok,
                                 offs_n, Tk, D, Dv, scale, ADDITIVE, HAS_DW, USE_DOT,
                                 PRECISION, ACC, BLOCK_M, BLOCK_N, BLOCK_K)
        g = _rows(g_base, rows, m_ok, offs_c, cx_ok, Dv)
        dx += _mm_tn(a, g, USE_DOT, PRECISION, ACC)
        qc = _rows(q_base, rows, m_ok, offs_c, cd_ok, D)
        if ADDITIVE:
            u = _tanh(qc.to(ACC)[:, None, :] + kc[None, :, :])
            dk += tl.sum(de[:, :, None] * (1.0 - u * u), axis=0) * wc[None, :]
            dwp += tl.sum(tl.sum(de[:, :, None] * u, axis=0), axis=0)
        else:
            dk += _mm_tn(de, qc, USE_DOT, PRECISION, ACC)
    if not ADDITIVE:
        dk = dk * scale
    n_in = offs_n < Tk
    out = (b * Tk + offs_n)[:, None]
    tl.store(dk_ptr + out * D + offs_c[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=n_in[:, None] & cd_ok[None, :])
    tl.store(dx_ptr + out * Dv + offs_c[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=n_in[:, None] & cx_ok[None, :])
    if ADDITIVE:
        tl.store(dwp_ptr + (b * tl.cdiv(Tk, BLOCK_N) + nb) * D + offs_c, dwp, mask=cd_ok)


@triton.jit
def _attn_bwd_dq(q_ptr, k_ptr, x_ptr, w_ptr, valid_ptr, lse_ptr, delta_ptr, g_ptr, dw_ptr,
                 dq_ptr, Tq, Tk, D, Dv, scale_ptr,
                 ADDITIVE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DW: tl.constexpr,
                 USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    """Grid (query blocks x column blocks, B): dq [B, Tq, D] of one query block's columns
    [c, c + BLOCK_C), summed over all keys."""
    rb, offs_m, _, offs_c = _tile(D, BLOCK_M, BLOCK_C)
    m_ok = offs_m < Tq
    c_ok = offs_c < D
    b = tl.program_id(1).to(tl.int64)
    scale = tl.load(scale_ptr)
    rows = b * Tq + rb * BLOCK_M
    q_tile = q_ptr + rows * D
    in_tile = tl.arange(0, BLOCK_M)
    lse = tl.load(lse_ptr + b * Tq + offs_m, mask=m_ok, other=float("-inf"))
    delta = tl.load(delta_ptr + b * Tq + offs_m, mask=m_ok, other=0.0)
    if ADDITIVE:
        qc = _rows(q_tile, in_tile, m_ok, offs_c, c_ok, D).to(ACC)
        wc = tl.load(w_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)
    dq = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for n0 in range(0, Tk, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        ok = _keys_ok(valid_ptr + b * Tk, offs_n, Tk, HAS_MASK)
        if ADDITIVE:  # a tile start; int64 rows spill here (module docstring)
            keys = b * Tk + n0
            k_tile, x_tile, k_rows = k_ptr + keys * D, x_ptr + keys * Dv, tl.arange(0, BLOCK_N)
        else:
            k_tile, x_tile, k_rows = k_ptr + b * Tk * D, x_ptr + b * Tk * Dv, offs_n.to(tl.int64)
        a, de = _probs_and_grads(q_tile, k_tile, x_tile, w_ptr, g_ptr + rows * Dv,
                                 dw_ptr + rows * Tk, lse, delta, in_tile, m_ok, k_rows, ok,
                                 offs_n, Tk, D, Dv, scale, ADDITIVE, HAS_DW, USE_DOT, PRECISION,
                                 ACC, BLOCK_M, BLOCK_N, BLOCK_K)
        kc = _rows(k_tile, k_rows, ok, offs_c, c_ok, D)
        if ADDITIVE:
            u = _tanh(qc[:, None, :] + kc.to(ACC)[None, :, :])
            dq += tl.sum(de[:, :, None] * (1.0 - u * u), axis=1) * wc[None, :]
        else:
            dq += _mm_nn(de, kc, USE_DOT, PRECISION, ACC)
    if not ADDITIVE:
        dq = dq * scale
    tl.store(dq_ptr + (b * Tq + offs_m)[:, None] * D + offs_c[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])
