"""Loader of the compiled extension ``fused_rnn._C``.

Importing ``fused_rnn._C`` registers the ops ``torch.ops.fused_rnn.*``. The package must
import without it (reference backend), so the import is attempted once, lazily, and a
failure is kept as a readable reason for the backend registry.
"""

from __future__ import annotations

import functools
from typing import Optional


@functools.lru_cache(maxsize=None)
def load_error() -> Optional[str]:
    """``None`` once ``fused_rnn._C`` is imported, else why it cannot be."""
    try:
        from . import _C  # noqa: F401  (registers torch.ops.fused_rnn.*)
    except ImportError as e:
        return f"fused_rnn._C is not built (ImportError: {e})"
    except OSError as e:  # e.g. built against another torch: undefined symbols
        return f"fused_rnn._C cannot be loaded (OSError: {e})"
    return None


@functools.lru_cache(maxsize=None)
def cpu_available() -> Optional[str]:
    """Availability of the ``cpu`` backend: ``None``, or the reason it cannot run."""
    err = load_error()
    if err is not None:
        return err
    import torch

    if not hasattr(torch.ops.fused_rnn, "recurrence_forward"):
        return "fused_rnn._C was imported but registered no recurrence ops (stale build?)"
    return None


def cpu_capability() -> Optional[str]:
    """The vector ISA the cpu kernels run with ("avx512", "avx2", "default"), or None."""
    if load_error() is not None:
        return None
    import torch

    return torch.ops.fused_rnn.cpu_capability()


def cpu_bf16_pairs() -> bool:
    """Whether the cpu backend's bf16 forward multiplies bf16 pairs (AVX512-BF16, and not
    ``FUSED_RNN_CPU_BF16=0``); else it widens bf16 to fp32 first."""
    if load_error() is not None:
        return False
    import torch

    return bool(torch.ops.fused_rnn.cpu_bf16_pairs())


@functools.lru_cache(maxsize=None)
def cuda_available() -> Optional[str]:
    """Availability of the ``cuda`` backend (the stepwise recurrence's CUDA kernels):
    ``None``, or the reason it cannot run."""
    err = load_error()
    if err is not None:
        return err
    import torch

    if not hasattr(torch.ops.fused_rnn, "stepwise_has_cuda"):
        return "fused_rnn._C was imported but registered no stepwise ops (stale build?)"
    if not torch.ops.fused_rnn.stepwise_has_cuda():
        if torch.version.cuda is None:
            return "torch is a CPU-only build"
        return "fused_rnn._C was built without its CUDA kernels (was nvcc found at build time?)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None
