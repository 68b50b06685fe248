"""Attention on the compiled extension (``torch.ops.fused_rnn.attention_*``, C++ in
``csrc/cpu/attention*``): score, masked softmax and context in one pass per query row.

``_fwd``/``_bwd`` are the fused-backend contract of ``function.py``: ``kind`` is "dot"
(``scale * q . k``) or "additive" (``v . tanh(q + k)``, q and k already projected).
"""

from __future__ import annotations

import torch

from ... import _native

_err = _native.load_error()
if _err is not None:
    raise ImportError(_err)
_ops = torch.ops.fused_rnn


def extension_launchers(forward: str, backward: str):
    """``(_fwd, _bwd)`` over the extension's ops named ``forward``/``backward`` (this
    schema: the cpu backend's ``attention_*``, the cuda backend's ``rowwise_attention_*``)."""
    forward_op, backward_op = getattr(_ops, forward), getattr(_ops, backward)

    def _fwd(q, k, values, valid, kind, v, scale, need_weights):
        """q [B, Tq, D]; k [B, Tk, D]; values [B, Tk, Dv]; valid [B, Tk] bool or None.

        Returns ``(context [B, Tq, Dv], weights [B, Tq, Tk] or None, saved)``.
        """
        q, k, values = q.contiguous(), k.contiguous(), values.contiguous()
        mask = None if valid is None else valid.contiguous()
        ctx, w, lse = forward_op(q, k, values, None, mask, v, kind == "additive", float(scale),
                                 bool(need_weights))
        return ctx, (w if need_weights else None), (lse,)

    def _bwd(q, k, values, valid, kind, v, scale, saved, dctx, dweights):
        """Returns ``(dq, dk, dvalues, dv or None)``."""
        q, k, values = q.contiguous(), k.contiguous(), values.contiguous()
        mask = None if valid is None else valid.contiguous()
        dq, dk, dvals, dv = backward_op(q, k, values, None, mask, v, kind == "additive",
                                        float(scale), saved[0], dctx, dweights)
        return dq, dk, dvals, (dv if kind == "additive" else None)

    return _fwd, _bwd


_fwd, _bwd = extension_launchers("attention_forward", "attention_backward")


def saved_like(q, k, values, valid, kind, v, scale, need_weights):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile):
    the log-sum-exp of each query row."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (q.new_empty(q.shape[:2], dtype=acc),)
