"""Argument checks of the attention entry point; messages name the argument and what
was expected."""

from __future__ import annotations

from typing import Optional

import torch

from ..recurrence.checks import check_float_tensor, check_like, check_shape, normalize_lengths, shape_str
from .reference import ADDITIVE, GENERAL, SCALED_DOT, SCORES


def check_attention_args(query, keys, values, score, lengths, mask, v, weight, scale=None):
    """Checked ``(values, valid [B, Tk] bool or None)``; raises on any bad argument."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    # An argument the score does not use is a mistaken call, not something to ignore.
    for name, given, user in (("v", v, ADDITIVE), ("weight", weight, GENERAL), ("scale", scale, SCALED_DOT)):
        if given is not None and score != user:
            raise ValueError(f"{name} is only used by score={user!r}, got it with score={score!r}")
    check_float_tensor("query", query)
    check_float_tensor("keys", keys)
    if query.dim() != 3:  # the entry point has already made a 2-D step query 3-D
        raise ValueError("query must be 2-D [batch, features] (one step) or 3-D [batch, steps, "
                         f"features], got shape {shape_str(query.shape)}")
    if keys.dim() != 3:
        raise ValueError(f"keys must be 3-D [batch, steps, features], got shape {shape_str(keys.shape)}")
    B, Tk = keys.shape[0], keys.shape[1]
    check_like("keys", keys, "query", query)
    if query.shape[0] != B:
        raise ValueError(f"query and keys must have the same batch size: query has "
                         f"{query.shape[0]}, keys has {B}")
    values = keys if values is None else values
    check_float_tensor("values", values)
    check_like("values", values, "query", query)
    if values.dim() != 3 or values.shape[:2] != keys.shape[:2]:
        raise ValueError(f"values must have shape ({B}, {Tk}, Dv) = (batch, keys' steps, "
                         f"value size), got {shape_str(values.shape)}")
    if score == ADDITIVE:
        if query.shape[-1] != keys.shape[-1]:
            raise ValueError(f"additive score: the projected query and keys must have the same "
                             f"size attn_size, got {query.shape[-1]} and {keys.shape[-1]}")
        if v is None:
            raise ValueError("additive score needs v [attn_size]")
        check_float_tensor("v", v)
        check_like("v", v, "query", query)
        check_shape("v", v, (query.shape[-1],), "(attn_size,)")
    elif score == GENERAL:
        if weight is None:
            raise ValueError("general score needs weight [key_size, query_size]")
        check_float_tensor("weight", weight)
        check_like("weight", weight, "query", query)
        check_shape("weight", weight, (keys.shape[-1], query.shape[-1]), "(key_size, query_size)")
    elif query.shape[-1] != keys.shape[-1]:
        raise ValueError(f"{score} score: query and keys must have the same feature size, got "
                         f"query {shape_str(query.shape)} and keys {shape_str(keys.shape)}")
    return values, _valid(lengths, mask, B, Tk, keys.device)


def _valid(lengths, mask, B: int, Tk: int, device) -> Optional[torch.Tensor]:
    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    if lengths is not None:
        lengths = normalize_lengths(lengths, B, Tk, allow_zero=True).to(device)
        return torch.arange(Tk, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor [batch, keys' steps] (True = attend), got {got}")
    check_shape("mask", mask, (B, Tk), "(batch, keys' steps)")
    if mask.device != device:
        raise RuntimeError(f"mask is on {mask.device} but keys are on {device}")
    return mask
