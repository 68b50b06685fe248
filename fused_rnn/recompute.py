"""Whether training keeps the gate activations from forward to backward or recomputes them.

A fused LSTM or GRU layer keeps what its backward needs: the states and the gate
activations, 4H numbers per row and step, most of it. With recompute on, the ``cpu``
backend keeps the states alone (fp32 and fp64, no ``proj_size``) and its backward
recomputes the activations a few steps at a time, with the forward's own step kernel: the
same numbers, for the forward's GEMM work once more. Other backends, dtypes and
projections keep everything either way.

The recompute holds buffers of its own through the backward: the forward's panels of
``[W_ih | W_hh]`` (I + P rows of G*H) and a ring of ~256 rows of 4H (``kRecomputeRows`` in
csrc/cpu/recurrence.cpp). A layer recomputes only where its activations (T*B rows of 4H)
outweigh both, T*B > I + P + 256; below that, recompute would cost memory as well as time,
and the layer keeps its activations (``FUSED_RNN_RECOMPUTE=always`` recomputes there too:
for the tests, which run small shapes).

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
if _ENV not in ("", "0", "1", "always"):
    raise ValueError(f"FUSED_RNN_RECOMPUTE must be 0, 1 or always, got {_ENV!r}")
_ALWAYS = _ENV == "always"
RING_ROWS = 256
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


@torch.compiler.assume_constant_result
def recompute_enabled() -> bool:
    """Whether a training forward now keeps only its states for backward, where that saves
    memory. Under torch.compile: read once while tracing; a later change takes effect in a
    new compilation (as ``set_backend``'s)."""
    for choice in (_context.get(), _global):
        if choice is not None:
            return choice
    return _ENV in ("1", "always")


def forward_saves(steps: int, batch: int, input_size: int, state_size: int) -> int:
    """What a training forward of x [steps, batch, input_size] with states of state_size asks
    its backend to keep (saved_layout's SAVE_*)."""
    if recompute_enabled() and (_ALWAYS or steps * batch > input_size + state_size + RING_ROWS):
        return SAVE_STATES
    return SAVE_ALL
