"""The keys per query row the cuda backend's attention kernels take: they keep three [Tk]
arrays of the accumulation type (float32; float64 for float64) and 32 reduction slots in
48 KiB of shared memory (``kMaxKeys`` of ``csrc/include/fused_rnn/attention_row.cuh``). Apart from ``rowwise.py``,
which needs the extension, so that the backend registry can refuse a call without it."""

from __future__ import annotations

import torch

_SHARED_BYTES = 48 * 1024


def max_keys(dtype: torch.dtype) -> int:
    size = 8 if dtype == torch.float64 else 4
    return (_SHARED_BYTES - 32 * size) // (3 * size)
