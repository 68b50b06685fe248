"""Recurrence on Triton kernels (``triton_kernels.py``): the launchers ``_fwd``/``_bwd``.

Same contract as ``reference.py``: one layer and one direction, time-major. The input
projection of all steps is one GEMM before the loop; the weight and input gradients are
one GEMM each after the backward loop. The loop itself runs in Triton, either as one
launch per step (a grid over row and unit tiles) or, at small H, as one launch for the
whole sequence (``kernel_config`` picks). ``saved`` (in loop order):
LSTM ``(acts [T, B, 4H], hs [T+1, B, P], cs [T+1, B, H][, yp [T, B, H]])``,
GRU ``(acts [T, B, 4H], hs [T+1, B, H])``, RNN ``(hs [T+1, B, H],)``;
``cs`` is fp32 for half inputs (the cell state accumulates over all steps).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from . import reference
from . import triton_kernels as K
from .cells import GATES, GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights
from .saved_layout import SAVE_ALL, fused_saved_like

MODES = {LSTM: K.LSTM_MODE, GRU: K.GRU_MODE, RNN_TANH: K.TANH_MODE, RNN_RELU: K.RELU_MODE}

# Above this hidden (or projected) size the per-step kernels' wider grid wins over one
# program per row tile looping over all units.
SEQ_MAX_HIDDEN = 256

# "auto" (kernel_config decides), "seq" or "step": the tests force each path in turn.
KERNEL_PATH = "auto"


class KernelConfig(NamedTuple):
    path: str  # "seq": one launch per sequence; "step": one launch per step
    block_b: int
    block_h: int  # hidden units per tile in forward, state columns per tile in backward
    block_k: int
    num_warps: int
    num_stages: int
    maxnreg: Optional[int] = None  # ptxas register cap per thread; None: ptxas chooses


def _pow2(n: int, lo: int, hi: int) -> int:
    # tl.dot needs every tile side >= 16 on GPUs.
    return max(lo, min(hi, 1 << max(0, int(n) - 1).bit_length()))


def kernel_config(batch: int, hidden: int, state: int, dtype: torch.dtype,
                  path: str = "auto") -> KernelConfig:
    """Tiles and kernel kind for B = batch, H = hidden, P = state size, inputs of ``dtype``.

    Every configuration this returns for H up to 1024 compiles for sm_80 and sm_90 with no
    register spills (tests/test_triton_compile.py prints the registers of each).
    """
    if path == "auto":
        path = "seq" if max(hidden, state) <= SEQ_MAX_HIDDEN else "step"
    if path == "seq":
        return _seq_config(hidden, state, dtype)
    block = _pow2(max(hidden, state), 16, 32)
    return KernelConfig("step", _pow2(batch, 16, 32), block, block, num_warps=4, num_stages=2)


def _seq_config(hidden: int, state: int, dtype: torch.dtype) -> KernelConfig:
    """The whole-sequence kernels: kept over per-step launches even where their tile must
    shrink to fit in registers, since a launch (~3 us) costs more than a whole small-H step.

    Their grid is only cdiv(B, block_b) programs, so occupancy is moot: ``maxnreg=255``
    stops ptxas from aiming at several blocks per SM (it spilled at 128 and 168 registers
    with all 255 free). 16 rows per program cost no per-step time, because each program
    reads all of W_hh every step whatever its rows, and give more programs to the SMs.
    Half inputs (tensor-core dots): 32-wide tiles with two pipeline stages stay at or
    under ~220 registers. fp32 ("ieee" precision) dots run on the FMA units with operands
    held per thread, and the backward's K loop streams 13 tiles (gates, states, W_hh):
    pipelining them spilled at every tile size tried, so fp32 uses 16-wide tiles and no
    pipelining (little lost: the FMA arithmetic, not load latency, bounds those steps).
    """
    if dtype in (torch.float16, torch.bfloat16):
        block = _pow2(max(hidden, state), 16, 32)
        return KernelConfig("seq", 16, block, block, num_warps=4, num_stages=2, maxnreg=255)
    return KernelConfig("seq", 16, 16, 16, num_warps=4, num_stages=1, maxnreg=255)


def _launch(cfg: KernelConfig) -> dict:
    options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.maxnreg is not None:
        options["maxnreg"] = cfg.maxnreg
    return options


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _constants(x: torch.Tensor, mode: str, lengths, reverse: bool, w: LayerWeights) -> dict:
    import triton.language as tl

    tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(MODE=MODES[mode], HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse),
                PROJ=w.w_hr is not None,
                ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
                PRECISION="tf32" if tf32 else "ieee")


def _device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _sizes(mode: str, x: torch.Tensor, w: LayerWeights):
    T, B = x.shape[0], x.shape[1]
    H = w.w_hh.shape[0] // GATES[mode]
    return T, B, H, w.w_hh.shape[1]


def _input_projection(mode: str, x: torch.Tensor, w: LayerWeights):
    """gx = x W_ih^T + b_ih + b_hh for all steps [T, B, G*H], and b_hn [H] (GRU keeps it
    inside the reset product, so it cannot join the others)."""
    H = w.w_hh.shape[0] // GATES[mode]
    bias, b_hn = w.b_ih, x.new_zeros(H)
    if w.b_hh is not None:
        if mode == GRU:
            b_hn = w.b_hh[2 * H:]
            bias = bias + torch.cat([w.b_hh[:2 * H], torch.zeros_like(b_hn)])
        else:
            bias = bias + w.b_hh
    return F.linear(x, w.w_ih, bias).contiguous(), b_hn.contiguous()


def _lengths_arg(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    if lengths is None:
        return torch.zeros(1, dtype=torch.int32, device=x.device)
    return lengths.to(device=x.device, dtype=torch.int32)


def _fwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, need_saved=True):
    """x [T, B, I]; h0 [B, P]; c0 [B, H] (LSTM) or None; lengths [B] int64 (CPU) or None.

    Returns ``y [T, B, P]``, ``h_n [B, P]``, ``c_n [B, H]`` or None, and ``saved``
    (empty unless ``need_saved``).
    """
    T, B, H, P = _sizes(mode, x, w)
    if B == 0:  # nothing to launch
        return reference._fwd(mode, reverse, x, h0, c0, w, lengths, need_saved)
    w = LayerWeights(*(None if t is None else t.contiguous() for t in w))
    cfg = kernel_config(B, H, P, x.dtype, KERNEL_PATH)
    const = _constants(x, mode, lengths, reverse, w)
    gx, b_hn = _input_projection(mode, x, w)
    slots = T + 1 if need_saved else 2  # every state for backward, else two alternating
    hs = x.new_empty(slots, B, P)
    hs[0] = h0
    state_dtype = _acc_dtype(x.dtype) if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    cs = x.new_empty(slots if mode == LSTM else 1, B, H, dtype=state_dtype)
    if mode == LSTM:
        cs[0] = c0
    acts = x.new_empty(T if need_saved and mode in (LSTM, GRU) else 1, B, 4 * H)
    yp = x.new_empty(T if need_saved else 1, B, H) if const["PROJ"] else x.new_empty(1)
    y = x.new_empty(T, B, P)
    lens = _lengths_arg(x, lengths)
    w_hr = x.new_empty(1) if w.w_hr is None else w.w_hr
    blocks = dict(BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k)
    rows = triton_cdiv(B, cfg.block_b)
    with _device(x):
        if cfg.path == "seq":
            K.recurrence_fwd_seq_kernel[(rows,)](
                B, H, P, T, gx, b_hn, w.w_hh, w_hr, hs, cs, acts, y, yp, lens,
                SAVE=need_saved, **const, **blocks, **_launch(cfg))
        else:
            for s in range(T):
                K.recurrence_fwd_step_kernel[(rows, triton_cdiv(H, cfg.block_h))](
                    s, B, H, P, T, gx, b_hn, w.w_hh, hs, cs, acts, y, yp, lens,
                    SAVE=need_saved, **const, **blocks, **_launch(cfg))
                if const["PROJ"]:
                    K.projection_fwd_step_kernel[(rows, triton_cdiv(P, cfg.block_h))](
                        s, B, H, P, T, yp, w_hr, hs, y, lens,
                        HAS_LENGTHS=const["HAS_LENGTHS"], REVERSE=const["REVERSE"],
                        SAVE=need_saved, ACC=const["ACC"], PRECISION=const["PRECISION"],
                        BLOCK_B=cfg.block_b, BLOCK_P=cfg.block_h, BLOCK_K=cfg.block_k,
                        **_launch(cfg))
    last = T if need_saved else T % 2
    c_n = cs[last].to(x.dtype) if mode == LSTM else None
    if not need_saved:
        return y, hs[last].clone(), c_n, ()
    saved = {LSTM: (acts, hs, cs) + ((yp,) if const["PROJ"] else ()), GRU: (acts, hs)}
    return y, hs[last].clone(), c_n, saved.get(mode, (hs,))


def _bwd(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saved, dy, dh_n, dc_n):
    """dy [T, B, P]; dh_n [B, P] or None; dc_n [B, H] or None.

    Returns ``(dx, dh0, dc0, LayerWeights of gradients)``, None where the input is None.
    """
    T, B, H, P = _sizes(mode, x, w)
    if B == 0:
        return reference._bwd(mode, reverse, x, h0, c0, w, lengths, saved, dy, dh_n, dc_n)
    w = LayerWeights(*(None if t is None else t.contiguous() for t in w))
    cfg = kernel_config(B, H, P, x.dtype, KERNEL_PATH)
    const = _constants(x, mode, lengths, reverse, w)
    acts, hs = (saved[0], saved[1]) if mode in (LSTM, GRU) else (x.new_empty(1), saved[0])
    cs = saved[2] if mode == LSTM else x.new_empty(1)
    yp = saved[3] if const["PROJ"] else None
    acc = _acc_dtype(x.dtype)
    dh = torch.zeros(2, B, P, dtype=acc, device=x.device)  # two alternating slots
    dc = torch.zeros(2, B, H if mode == LSTM else 1, dtype=acc, device=x.device)
    if dh_n is not None:
        dh[(T - 1) % 2] = dh_n
    if dc_n is not None:
        dc[(T - 1) % 2] = dc_n
    da = x.new_empty(T, B, 4 * H if mode in (LSTM, GRU) else H)
    dyp = torch.empty(B, H, dtype=acc, device=x.device) if yp is not None else dh
    gs = x.new_empty(T, B, P) if yp is not None else x.new_empty(1)
    dy = dy.contiguous()
    lens = _lengths_arg(x, lengths)
    w_hr = x.new_empty(1) if w.w_hr is None else w.w_hr
    blocks = dict(BLOCK_B=cfg.block_b, BLOCK_P=cfg.block_h, BLOCK_K=cfg.block_k)
    rows = triton_cdiv(B, cfg.block_b)
    with _device(x):
        if cfg.path == "seq":
            K.recurrence_bwd_seq_kernel[(rows,)](
                B, H, P, T, dy, dh, dyp, dc, acts, hs, cs, w.w_hh, w_hr, da, gs, lens,
                **const, **blocks, **_launch(cfg))
        else:
            for s in range(T - 1, -1, -1):
                if const["PROJ"]:
                    K.projection_bwd_step_kernel[(rows, triton_cdiv(H, cfg.block_h))](
                        s, B, H, P, T, dy, dh, w_hr, dyp, gs, lens,
                        HAS_LENGTHS=const["HAS_LENGTHS"], REVERSE=const["REVERSE"],
                        ACC=const["ACC"], PRECISION=const["PRECISION"],
                        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
                        **_launch(cfg))
                K.recurrence_bwd_step_kernel[(rows, triton_cdiv(P, cfg.block_h))](
                    s, B, H, P, T, dy, dh, dyp, dc, acts, hs, cs, w.w_hh, da, lens,
                    **const, **blocks, **_launch(cfg))
    return _weight_grads(mode, reverse, x, w, lengths, hs, yp, da, gs, dh[1], dc[1])


def _weight_grads(mode, reverse, x, w, lengths, hs, yp, da, gs, dh0, dc0):
    """dx and the weight gradients: one GEMM each over all steps (loop order throughout,
    back to time order for dx and dW_ih in reverse)."""
    H = w.w_hh.shape[0] // GATES[mode]
    da_in = da[..., :GATES[mode] * H]
    # GRU's W_hh side of gate n is da_n * r, stored after the three gates.
    da_h = torch.cat([da[..., :2 * H], da[..., 3 * H:]], -1) if mode == GRU else da_in
    if reverse:
        da_in = reference._gather_time(da_in, reference._reverse_index(x, lengths))
    flat = reference._flat
    grads = LayerWeights(
        w_ih=flat(da_in).t().mm(flat(x)),
        w_hh=flat(da_h).t().mm(flat(hs[:-1])),
        b_ih=None if w.b_ih is None else flat(da_in).sum(0),
        b_hh=None if w.b_hh is None else flat(da_h).sum(0),
        w_hr=None if yp is None else flat(gs).t().mm(flat(yp)),
    )
    dx = torch.matmul(da_in, w.w_ih)
    return dx, dh0.to(x.dtype), (dc0.to(x.dtype) if mode == LSTM else None), grads


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def saved_like(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saves=SAVE_ALL):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile); it
    keeps everything whatever ``saves`` asks."""
    if x.shape[1] == 0:  # _fwd hands an empty batch to the reference
        return reference.saved_like(mode, reverse, x, h0, c0, w, lengths)
    half = x.dtype in (torch.float16, torch.bfloat16)
    return fused_saved_like(mode, x, w, _acc_dtype(x.dtype) if half else None)
