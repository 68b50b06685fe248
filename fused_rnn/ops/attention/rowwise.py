"""The cuda backend's attention: the kernels of ``csrc/include/fused_rnn/attention_row.cuh``
(forward: a block per query row; backward: a block per batch element, which owns its keys'
gradients, so they are summed without atomics), through the ops
``torch.ops.fused_rnn.rowwise_attention_*`` (``csrc/bindings/rowwise_attention.cpp``), with
the cpu backend's schema and launchers (``native.py``).

On CPU tensors the ops run the kernels' per-element functions on host threads, which is
how the tests check this module without a GPU. ``saved``: the log-sum-exp of each query
row [B, Tq], float32 (float64 for float64).
"""

from __future__ import annotations

from .native import extension_launchers, saved_like  # noqa: F401  (the backend contract)

_fwd, _bwd = extension_launchers("rowwise_attention_forward", "rowwise_attention_backward")
