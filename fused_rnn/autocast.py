"""torch.autocast: the dtypes torch.nn's recurrent modules compute in and return, mirrored.

Measured with torch 2.13 under ``torch.autocast("cpu", dtype=torch.bfloat16)``: every
torch.nn recurrence multiplies in bf16 (LSTM through oneDNN's autocast rule, the others
through their inner ``linear``), but GRU, LSTMCell and GRUCell return fp32 (their state
update mixes the bf16 gates with the fp32 state), while LSTM, RNN and RNNCell return bf16.
On CUDA, cuDNN's RNNs and the ``*_cell`` ops are on autocast's lower-precision list: all
return the autocast dtype. The fused modules cast their inputs, states and weights to
the autocast dtype, run the kernels (fp32 accumulation and cell state inside) with
autocast off, and return the dtype torch.nn would. Attention has no torch.nn counterpart:
it computes and returns the autocast dtype, as the matmuls it replaces would.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from .ops.recurrence.cells import GRU, LSTM

# (mode, is_cell) whose torch.nn module returns fp32 under CPU autocast.
_FP32_RESULT_ON_CPU = {(GRU, False), (LSTM, True), (GRU, True)}


def recurrence_dtypes(mode: str, x: torch.Tensor, is_cell: bool) -> Optional[tuple]:
    """``(device type, compute dtype, result dtype)`` under an active autocast for x's
    device, else None."""
    compute = _autocast_dtype(x)
    if compute is None:
        return None
    fp32_result = x.device.type == "cpu" and (mode, is_cell) in _FP32_RESULT_ON_CPU
    return x.device.type, compute, (torch.float32 if fp32_result else compute)


def attention_dtypes(q: torch.Tensor) -> Optional[tuple]:
    compute = _autocast_dtype(q)
    return None if compute is None else (q.device.type, compute, compute)


def _autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _cast(obj, dtype: torch.dtype):
    """Floating tensors in ``obj`` (nested lists/tuples) to ``dtype``; the rest as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        items = [_cast(o, dtype) for o in obj]
        # A NamedTuple (e.g. VariantWeights) takes its fields as arguments, not an iterable.
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def run_cast(plan: tuple, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with autocast off on the device of ``plan`` (what
    ``*_dtypes`` returned), on inputs cast to its compute dtype, its floating results cast
    to its result dtype."""
    device, compute, result = plan
    with torch.autocast(device, enabled=False):
        out = fn(*_cast(args, compute), **{k: _cast(v, compute) for k, v in kwargs.items()})
    return _cast(out, result)


@contextlib.contextmanager
def autocast_off():
    """Autocast off on CPU and CUDA. For the backward passes: one run inside an autocast
    region (``loss.backward()`` under ``torch.autocast``) must compute as its forward did,
    as torch.nn's recurrences do, not in the autocast dtype."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


def without_autocast(fn):
    """``fn`` under :func:`autocast_off` (the eager autograd Functions' backward), entered
    only when autocast is on: its two contexts cost more than a decoder cell's Python."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")):
            return fn(*args, **kwargs)
        with autocast_off():
            return fn(*args, **kwargs)
    return run
