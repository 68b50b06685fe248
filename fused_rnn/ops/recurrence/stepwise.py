"""The cuda backend's recurrence: a GEMM per step (cuBLAS) and the fused pointwise step
kernel of ``csrc/include/fused_rnn/recurrence_step.cuh``, or, where a block holds W_hh in
shared memory (no projection, small H), one whole-sequence launch of
``recurrence_sequence.cuh``, or, asked for (``FUSED_RNN_CUDA_SEQUENCE=grid``), one
cooperative launch of ``recurrence_grid.cuh`` (the units over several blocks); through the ops
``torch.ops.fused_rnn.stepwise_recurrence_*`` (``csrc/bindings/stepwise_recurrence.cpp``;
``FUSED_RNN_CUDA_SEQUENCE=0|1|grid`` forces a path).

The cpu backend's schema and launchers (``native.py``), another saved layout. On CPU
tensors the ops run the kernels' per-element functions on host threads: the tests drive this
module there, so every part but the launch itself is checked without a GPU. ``saved``: LSTM ``(acts [T, B, 4H], hs [T+1, B, P],
cs [T+1, B, H] in float32 (float64 for float64)[, y_pre [T, B, H]])``, GRU ``(acts, hs)``,
RNN ``(hs,)``.
"""

from __future__ import annotations

import torch

from .cells import LayerWeights
from .native import extension_launchers
from .saved_layout import SAVE_ALL, fused_saved_like

# _bwd writes the LSTM gate gradients over the saved activations (see function.py).
OVERWRITES_SAVED = True

_fwd, _bwd = extension_launchers("stepwise_recurrence_forward", "stepwise_recurrence_backward")


def saved_like(mode, reverse, x, h0, c0, w: LayerWeights, lengths, saves=SAVE_ALL):
    """Empty tensors shaped as the ``saved`` that ``_fwd`` returns (for torch.compile); it
    keeps everything whatever ``saves`` asks."""
    cell = torch.float64 if x.dtype == torch.float64 else torch.float32
    return fused_saved_like(mode, x, w, cell_dtype=cell)
