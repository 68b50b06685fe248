"""Attention on Triton kernels (``triton_kernels.py``): the launchers ``_fwd``/``_bwd``.

Same contract as ``native.py`` (see ``function.py``): ``kind`` is "dot" (``scale * q . k``)
or "additive" (``v . tanh(q + k)``, q and k already projected). Forward is one online-softmax
pass over the keys per query block, never the [B, Tq, Tk] scores; when few programs would
cover the batch and Tk is long (a decoder step), the keys are split across programs and a
second kernel merges the partial results (flash-decoding). The weights, when asked for,
are a second pass from the saved log-sum-exp. Backward recomputes the scores: one kernel
owns key blocks (dk, dvalues, the additive dv), one owns query blocks (dq); no atomics, so
results are deterministic.

``saved`` = ``(lse [B, Tq], context [B, Tq, Dv][, weights [B, Tq, Tk]])``: backward's
``delta = dctx . context + weights . dweights`` comes from the outputs instead of another
pass over the keys (weights are kept only with ``need_weights``, the one case where
``dweights`` can be given). lse is fp32 (fp64 for fp64 inputs), -inf for a row with no
valid key. Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import triton_kernels as K

KINDS = ("dot", "additive")
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTERPRETER_DTYPES = (torch.float32, torch.float64)  # the interpreter's numpy has no bf16


class Limits(NamedTuple):
    """Caps on tile sizes; the tests shrink them to reach multi-block, multi-chunk and
    split-key paths with small inputs."""

    block_n: int = 32          # keys per block
    block_k: int = 64          # features per chunk of a dot product over D or Dv
    block_c: int = 64          # output columns per backward program
    block_c_fwd: int = 1024    # context columns per forward program (broadcast path)
    tile: int = 4096           # elements of a 3-D broadcast temporary: 32 fp32 registers
                               # a thread at 4 warps
    split_min_keys: int = 512  # the forward never splits fewer keys than this
    split_min_blocks: int = 4  # key blocks per split at least: enough work to pay the merge


LIMITS = Limits()
# (block_n, block_k, block_c, num_warps) of the tl.dot path, per kernel: the largest tiles
# found to compile without register spills for sm_80 and sm_90 in fp32, whose "ieee" dot
# runs on FMA units and holds the most registers (tests/test_attention_triton_compile.py).
_DOT_TILES = {"fwd": (32, 64, 128, 4), "dkx": (16, 32, 64, 4), "dq": (32, 64, 64, 8)}


class Config(NamedTuple):
    block_m: int  # query rows per block
    block_n: int
    block_k: int
    block_c: int
    use_dot: bool  # tl.dot tiles (>= 16 a side) instead of broadcast-and-sum
    num_warps: int


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, int(n)))))


def kernel_config(kernel: str, kind: str, dtype: torch.dtype, Tq: int, Tk: int, D: int, Dv: int,
                  lim: Limits = None) -> Config:
    """Tiles of ``kernel`` ("fwd": forward and weights, "dkx" or "dq") for these sizes."""
    lim = lim or LIMITS
    cols = {"fwd": Dv, "dkx": max(D, Dv), "dq": D}[kernel]
    # One query row would leave 15 of a 16-row tl.dot tile empty; fp64 tl.dot is slow or
    # missing on GPUs; the additive score is elementwise per (query, key, feature).
    if kind == "dot" and Tq > 1 and dtype != torch.float64:
        bn, bk, bc, warps = _DOT_TILES[kernel]
        cap_c = lim.block_c_fwd if kernel == "fwd" else lim.block_c
        return Config(16, _pow2(Tk, 16, min(bn, lim.block_n)),
                      _pow2(max(D, Dv), 16, min(bk, lim.block_k)), _pow2(cols, 16, min(bc, cap_c)),
                      True, warps)
    bm = _pow2(Tq, 1, 4)
    cap_c = lim.block_c if kernel != "fwd" else min(lim.block_c_fwd, lim.tile // (bm * 8))
    bc = _pow2(cols, 1, cap_c)
    bn = _pow2(Tk, 1, min(lim.block_n, max(1, lim.tile // (bm * bc))))
    bk = _pow2(max(D, Dv), 1, min(lim.block_k, max(1, lim.tile // (bm * bn))))
    return Config(bm, bn, bk, bc, False, 4)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter and compile tests decide as on an H100


def key_splits(B: int, row_programs: int, Tk: int, block_n: int, device: torch.device,
               lim: Limits = None) -> tuple:
    """``(n_split, keys_per_split)``: split the keys only while the grid is smaller than
    two waves of programs."""
    lim = lim or LIMITS
    if Tk == 0 or Tk < lim.split_min_keys:
        return 1, max(Tk, 1)
    want = max(1, 2 * _sm_count(device) // max(1, B * row_programs))
    n = min(triton.cdiv(Tk, block_n * lim.split_min_blocks), want)
    per = triton.cdiv(triton.cdiv(Tk, n), block_n) * block_n
    return triton.cdiv(Tk, per), per


def _launch(kernel, grid, args, consts, num_warps):
    if 0 in grid:  # an empty batch, query or key axis: nothing to compute
        return
    kernel[grid](*args, **consts, num_warps=num_warps)


def _device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _check(q, k, values, kind, v):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "additive" and v is None:
        raise ValueError("additive attention needs v [attn_size]")
    if q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the triton attention backend runs CPU tensors only under "
                         "TRITON_INTERPRET=1 (tests); query is on cpu")
    allowed = _INTERPRETER_DTYPES if q.device.type == "cpu" else _CUDA_DTYPES
    if q.device.type in ("cpu", "cuda") and q.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"the triton attention backend supports query dtypes {names} on "
                        f"{q.device.type}, got {str(q.dtype).replace('torch.', '')}")
    for name, t in (("keys", k), ("values", values), ("v", v)):
        if t is not None and (t.device != q.device or t.dtype != q.dtype):
            raise TypeError(f"{name} must match query's device and dtype ({q.device}, "
                            f"{q.dtype}), got ({t.device}, {t.dtype})")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _consts(q, kind, valid, cfg: Config) -> dict:
    tf32 = q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(ADDITIVE=kind == "additive", HAS_MASK=valid is not None, USE_DOT=cfg.use_dot,
                PRECISION="tf32" if tf32 else "ieee",
                ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)


def _common(q, k, values, valid, kind, v, scale):
    """Contiguous inputs and the pointers for absent ones (never read: their flag is off)."""
    q, k, values = q.contiguous(), k.contiguous(), values.contiguous()
    w = v.contiguous() if kind == "additive" else q
    mask = q if valid is None else valid.contiguous().view(torch.uint8)
    scale_t = torch.full((1,), float(scale), dtype=_acc(q.dtype), device=q.device)
    return q, k, values, w, mask, scale_t


def _fwd(q, k, values, valid, kind, v, scale, need_weights, launch=_launch):
    """q [B, Tq, D]; k [B, Tk, D]; values [B, Tk, Dv]; valid [B, Tk] bool or None.

    Returns ``(context [B, Tq, Dv], weights [B, Tq, Tk] or None, saved)``. ``launch`` runs
    one kernel (the compile test passes one that compiles instead).
    """
    _check(q, k, values, kind, v)
    q, k, values, w, mask, scale_t = _common(q, k, values, valid, kind, v, scale)
    (B, Tq, D), Tk, Dv = q.shape, k.shape[1], values.shape[-1]
    cfg = kernel_config("fwd", kind, q.dtype, Tq, Tk, D, Dv)
    consts = _consts(q, kind, valid, cfg)
    acc = _acc(q.dtype)
    context = torch.empty(B, Tq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Tq, dtype=acc, device=q.device)
    rows = triton.cdiv(Tq, cfg.block_m) * triton.cdiv(Dv, cfg.block_c)
    n_split, per_split = key_splits(B, rows, Tk, cfg.block_n, q.device)
    fwd_consts = dict(consts, SPLIT=n_split > 1, BLOCK_C=cfg.block_c)
    sizes = [Tq, Tk, D, Dv, per_split, n_split, scale_t]
    with _device(q):
        if n_split == 1:
            launch(K._attn_fwd, (rows, B, 1), [q, k, values, w, mask, context, lse, lse, lse,
                                              *sizes], fwd_consts, cfg.num_warps)
        else:
            part = torch.empty(B, Tq, n_split, Dv, dtype=acc, device=q.device)
            m, s = (torch.empty(B, Tq, n_split, dtype=acc, device=q.device) for _ in range(2))
            launch(K._attn_fwd, (rows, B, n_split), [q, k, values, w, mask, part, lse, m, s,
                                                     *sizes], fwd_consts, cfg.num_warps)
            bs = triton.next_power_of_2(n_split)
            bc = _pow2(Dv, 1, max(1, min(LIMITS.block_c_fwd, LIMITS.tile // bs)))
            launch(K._attn_combine, (B * Tq, triton.cdiv(Dv, bc)),
                   [part, m, s, context, lse, n_split, Dv],
                   dict(ACC=consts["ACC"], BLOCK_S=bs, BLOCK_C=bc), 4)
        weights = None
        if need_weights:
            weights = torch.empty(B, Tq, Tk, dtype=q.dtype, device=q.device)
            launch(K._attn_weights, (triton.cdiv(Tq, cfg.block_m), B, triton.cdiv(Tk, cfg.block_n)),
                   [q, k, w, mask, lse, weights, Tq, Tk, D, scale_t], consts, cfg.num_warps)
    return context, weights, (lse, context) + ((weights,) if need_weights else ())


def _bwd(q, k, values, valid, kind, v, scale, saved, dctx, dweights, launch=_launch):
    """Returns ``(dq, dk, dvalues, dv or None)``; ``saved`` as ``_fwd`` returned it."""
    _check(q, k, values, kind, v)
    if dweights is not None and len(saved) < 3:
        raise ValueError("dweights given, but the forward ran with need_weights=False")
    q, k, values, w, mask, scale_t = _common(q, k, values, valid, kind, v, scale)
    (B, Tq, D), Tk, Dv = q.shape, k.shape[1], values.shape[-1]
    acc = _acc(q.dtype)
    lse, context = saved[0], saved[1]
    dctx = dctx.contiguous()
    delta = (dctx.to(acc) * context.to(acc)).sum(-1)
    if dweights is not None:
        dweights = dweights.contiguous()
        delta += (dweights.to(acc) * saved[2].to(acc)).sum(-1)
    dkx, dqc = (kernel_config(n, kind, q.dtype, Tq, Tk, D, Dv) for n in ("dkx", "dq"))
    flags = dict(HAS_DW=dweights is not None)
    dq, dk, dvalues = torch.empty_like(q), torch.empty_like(k), torch.empty_like(values)
    n_nb = triton.cdiv(Tk, dkx.block_n)
    dwp = torch.empty(B, n_nb, D, dtype=acc, device=q.device) if kind == "additive" else q
    inputs = [q, k, values, w, mask, lse, delta, dctx, q if dweights is None else dweights]
    sizes = [Tq, Tk, D, Dv, scale_t]
    with _device(q):
        launch(K._attn_bwd_dkx, (n_nb * triton.cdiv(max(D, Dv), dkx.block_c), B),
               [*inputs, dk, dvalues, dwp, *sizes],
               dict(_consts(q, kind, valid, dkx), **flags, BLOCK_C=dkx.block_c), dkx.num_warps)
        launch(K._attn_bwd_dq, (triton.cdiv(Tq, dqc.block_m) * triton.cdiv(D, dqc.block_c), B),
               [*inputs, dq, *sizes],
               dict(_consts(q, kind, valid, dqc), **flags, BLOCK_C=dqc.block_c), dqc.num_warps)
    dv = dwp.sum((0, 1)).to(q.dtype) if kind == "additive" else None
    return dq, dk, dvalues, dv


def saved_like(q, k, values, valid, kind, v, scale, need_weights):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile):
    the log-sum-exp of each query row, the context and, if asked, the weights."""
    (B, Tq), Tk = q.shape[:2], k.shape[1]
    saved = (q.new_empty(B, Tq, dtype=_acc(q.dtype)), q.new_empty(B, Tq, values.shape[-1]))
    return saved + ((q.new_empty(B, Tq, Tk),) if need_weights else ())
