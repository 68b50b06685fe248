"""What the torch.library custom ops of ``ops/*/library.py`` share.

A custom op may not return one of its inputs, nor two outputs over one storage; the
backends do both where it is free (``h_n`` a view of the saved states, the context kept
for backward), so the ops copy those few tensors.
"""

from __future__ import annotations

import torch


def unaliased(outputs, inputs) -> list:
    """``outputs`` with each tensor that shares memory with an input or an earlier output
    replaced by a copy (empty tensors share nothing)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs
            if isinstance(t, torch.Tensor) and t.numel()}
    result = []
    for t in outputs:
        if t.numel():
            if t.untyped_storage().data_ptr() in seen:
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
        result.append(t)
    return result


def none_if_empty(t, like):
    """The gradient of an optional input: None where the input was None."""
    return None if like is None else t


def or_empty(t, like: torch.Tensor) -> torch.Tensor:
    """A custom op returns tensors only: an absent one travels as an empty tensor."""
    return like.new_empty(0) if t is None else t
