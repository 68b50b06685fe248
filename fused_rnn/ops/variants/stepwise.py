"""The cuda backend's variant recurrences (LayerNorm LSTM/GRU, zoneout): a GEMM per step
(cuBLAS) and the fused row step of ``csrc/include/fused_rnn/variant_row.cuh`` (one block per
batch row: both layer norms reduce within it), through the ops
``torch.ops.fused_rnn.stepwise_variant_*`` (``csrc/bindings/stepwise_variants.cpp``).

The cpu backend's schema and launchers (``native.py``), another saved layout
(``csrc/stepwise/variant_loop.h``). On CPU tensors the ops run the kernels' row bodies on
host threads, which is how the tests check everything but the launch without a GPU.
"""

from __future__ import annotations

from ..recurrence.cells import LSTM
from .layout import VariantWeights
from .native import extension_launchers

# _bwd writes the LSTM gate gradients over the saved activations (see
# ops/recurrence/function.py).
OVERWRITES_SAVED = True

_fwd, _bwd = extension_launchers("stepwise_variant_forward", "stepwise_variant_backward")


def saved_like(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h=None, keep_c=None):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile)."""
    import torch

    T, B = x.shape[:2]
    GH, H = w.w_hh.shape
    lstm = mode == LSTM
    acc = x.new_empty(0, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    saved = [x.new_empty(T, B, 4 * H), x.new_empty(T + 1, B, H)]
    if lstm:
        saved += [acc.new_empty(T + 1, B, H), acc.new_empty(T, B, H)]
    if w.layer_norm:
        saved += [x.new_empty(T, B, GH), acc.new_empty(T, B)]
        if lstm:
            saved.append(acc.new_empty(T, B))
        saved += [x.new_empty(T, B, GH), acc.new_empty(T, B), acc.new_empty(T, B)]
    return tuple(saved)
