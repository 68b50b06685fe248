"""Headwise (block-diagonal) recurrence, run as one recurrence per head.

The gates of head k read only head k's previous state (``modules/recurrent_weights.py``
has the layout), so a layer of K heads is K independent layers of ``Hh = H / K`` units over
the same input: head k's rows of ``W_ih`` and of the biases, its block of ``W_hh``, its
slice of ``h0``/``c0``; their outputs side by side are the layer's. Each head's recurrent
GEMM is ``Hh`` wide, K times fewer multiply-adds than the dense block-diagonal matrix,
and one head's weights fit on chip where a large dense ``W_hh`` would not.
"""

from __future__ import annotations

import torch


def is_headwise(w) -> bool:
    """``w`` (``LayerWeights`` or ``VariantWeights``) holds ``w_hh`` as head blocks."""
    return w.w_hh.dim() == 3


def call_hidden_size(w, gates: int) -> int:
    """The hidden size one kernel call of this layer sees: a head's, or the layer's."""
    return w.w_hh.shape[-1] if is_headwise(w) else w.w_ih.shape[0] // gates


def head_weights(w) -> list:
    """The weights of each head of a layer whose ``w_hh`` holds the blocks ``[K, G*Hh, Hh]``
    (``w_ih [G*H, I]`` and the biases ``[G*H]`` gate-major, as torch.nn's): ``LayerWeights``
    or ``VariantWeights`` as ``w``, its fields past the biases None (no projection, no norm)."""
    K, GHh, Hh = w.w_hh.shape
    G = GHh // Hh

    def by_head(t):  # gate-major rows [G*H, ...] -> [K, G*Hh, ...]
        if t is None:
            return [None] * K
        rest = t.shape[1:]
        return t.view(G, K, Hh, *rest).transpose(0, 1).reshape(K, GHh, *rest).unbind(0)

    unused = [None] * (len(w) - 4)
    return [type(w)(*parts, *unused) for parts in zip(by_head(w.w_ih), w.w_hh.unbind(0),
                                                     by_head(w.b_ih), by_head(w.b_hh))]


def run_heads(run_one, reverse, x, h0, c0, w, lengths, *per_unit):
    """``run_one(reverse, x, h0, c0, w, lengths, *per_unit) -> (y, h_n, c_n)`` for each
    head, joined on the feature axis: the layer's ``(y [T, B, H], h_n [B, H], c_n [B, H] or
    None)``. ``per_unit``: tensors over the hidden units on their last axis (zoneout keeps,
    [T, B, H]) or None, each head given its units."""
    Hh = w.w_hh.shape[2]
    outs = []
    for k, wk in enumerate(head_weights(w)):
        units = slice(k * Hh, (k + 1) * Hh)
        part = lambda t: None if t is None else t[..., units]  # noqa: E731
        outs.append(run_one(reverse, x, part(h0), part(c0), wk, lengths, *map(part, per_unit)))
    y, h_n, c_n = zip(*outs)
    return (torch.cat(y, -1), torch.cat(h_n, -1),
            None if c_n[0] is None else torch.cat(c_n, -1))
