"""Whether training keeps the gate activations from forward to backward or recomputes them.

A fused LSTM or GRU layer keeps what its backward needs: the states and the gate
activations, 4H numbers per row and step, most of it. With recompute on, the ``cpu``
backend keeps the states alone (fp32 and fp64, no ``proj_size``) and its backward
recomputes the activations a few steps at a time, with the forward's own step kernel: the
same numbers, for the forward's GEMM work once more. Other backends, dtypes and
projections keep everything either way.

Which setting a forward uses: the innermost ``use_recompute(...)`` context, else
``set_recompute(...)``, else the ``FUSED_RNN_RECOMPUTE`` environment variable (``1`` on,
read once, at import), else off. A layer's backward follows its forward's choice; a graph
compiled by torch.compile keeps the choice made while tracing it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional

import torch

from .ops.recurrence.saved_layout import SAVE_ALL, SAVE_STATES

_ENV = os.environ.get("FUSED_RNN_RECOMPUTE", "").strip()
if _ENV not in ("", "0", "1"):
    raise ValueError(f"FUSED_RNN_RECOMPUTE must be 0 or 1, got {_ENV!r}")
_global: Optional[bool] = None
_context: contextvars.ContextVar = contextvars.ContextVar("fused_rnn_recompute", default=None)


def _check(enabled) -> None:
    if not isinstance(enabled, bool):
        raise TypeError(f"recompute must be a bool, got {type(enabled).__name__}")


def set_recompute(enabled: Optional[bool]) -> None:
    """Recompute the gate activations in backward (True) or keep them (False) for every later
    forward; ``None`` restores the default (``FUSED_RNN_RECOMPUTE``, else off)."""
    global _global
    if enabled is not None:
        _check(enabled)
    _global = enabled


@contextlib.contextmanager
def use_recompute(enabled: bool = True) -> Iterator[None]:
    """Recompute (or keep, with False) the gate activations of the forwards inside the block."""
    _check(enabled)
    token = _context.set(enabled)
    try:
        yield
    finally:
        _context.reset(token)


def recompute_enabled() -> bool:
    """Whether a forward now keeps only its states for backward."""
    for choice in (_context.get(), _global):
        if choice is not None:
            return choice
    return _ENV == "1"


@torch.compiler.assume_constant_result
def forward_saves() -> int:
    """What a training forward asks its backend to keep (saved_layout's SAVE_*). Under
    torch.compile: computed once while tracing; a later change takes effect in a new
    compilation (as ``set_backend``'s)."""
    return SAVE_STATES if recompute_enabled() else SAVE_ALL
