"""The cuda backend's attention: the kernels of ``csrc/include/fused_rnn/attention_row.cuh``
(forward: a block per query row; backward: a block per batch element, which owns its keys'
gradients, so they are summed without atomics), through the ops
``torch.ops.fused_rnn.rowwise_attention_*`` (``csrc/bindings/rowwise_attention.cpp``).

The same launchers as ``native.py``. On CPU tensors the ops run the kernels' per-element
functions on host threads, which is how the tests check this module without a GPU.
``saved``: the log-sum-exp of each query row [B, Tq], float32 (float64 for float64).
"""

from __future__ import annotations

import torch

from ... import _native

_err = _native.load_error()
if _err is not None:
    raise ImportError(_err)
_ops = torch.ops.fused_rnn


def _fwd(q, k, values, valid, kind, v, scale, need_weights):
    """q [B, Tq, D]; k [B, Tk, D]; values [B, Tk, Dv]; valid [B, Tk] bool or None.

    Returns ``(context [B, Tq, Dv], weights [B, Tq, Tk] or None, saved)``.
    """
    q, k, values = q.contiguous(), k.contiguous(), values.contiguous()
    mask = None if valid is None else valid.contiguous()
    ctx, w, lse = _ops.rowwise_attention_forward(q, k, values, None, mask, v, kind == "additive",
                                                 float(scale), bool(need_weights))
    return ctx, (w if need_weights else None), (lse,)


def _bwd(q, k, values, valid, kind, v, scale, saved, dctx, dweights):
    """Returns ``(dq, dk, dvalues, dv or None)``."""
    q, k, values = q.contiguous(), k.contiguous(), values.contiguous()
    mask = None if valid is None else valid.contiguous()
    dq, dk, dvals, dv = _ops.rowwise_attention_backward(
        q, k, values, None, mask, v, kind == "additive", float(scale), saved[0], dctx, dweights)
    return dq, dk, dvals, (dv if kind == "additive" else None)


def saved_like(q, k, values, valid, kind, v, scale, need_weights):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (q.new_empty(q.shape[:2], dtype=acc),)
