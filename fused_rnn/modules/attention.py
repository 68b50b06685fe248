"""Encoder-decoder attention modules: Bahdanau (additive) and Luong (dot, general, concat).

The keys' projection depends only on the source sequence: compute it once with
``project_keys(keys)`` and pass it to every decoder step as ``projected_keys=``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as F


def _init_v(v: nn.Parameter) -> None:
    bound = 1.0 / math.sqrt(v.shape[0])
    nn.init.uniform_(v, -bound, bound)


class _Attention(nn.Module):
    """Shared ``forward``: subclasses say how to project keys and query, and the score."""

    score: str

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [B, Tk, key_size] -> what ``forward`` scores against (reuse across steps)."""
        return keys

    def _query_args(self, query):
        return query, {}

    def forward(self, query, keys, values=None, lengths=None, mask=None, projected_keys=None,
                need_weights=True):
        """query [B, Tq, query_size] or one step [B, query_size]; keys [B, Tk, key_size];
        values [B, Tk, Dv] (default: keys); ``lengths`` [B] or ``mask`` [B, Tk] (True =
        attend). Returns ``(context [B, (Tq,) Dv], weights [B, (Tq,) Tk])``; weights is
        None with ``need_weights=False``."""
        pk = self.project_keys(keys) if projected_keys is None else projected_keys
        q, extra = self._query_args(query)
        return F.attention(q, pk, keys if values is None else values, score=self.score,
                           lengths=lengths, mask=mask, need_weights=need_weights, **extra)


class AdditiveAttention(_Attention):
    """Bahdanau attention: ``e_j = v . tanh(W_q q + b + W_k k_j)``."""

    score = "additive"

    def __init__(self, query_size: int, key_size: int, attn_size: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.query_proj = nn.Linear(query_size, attn_size, bias=bias, **kw)
        self.key_proj = nn.Linear(key_size, attn_size, bias=False, **kw)
        self.v = nn.Parameter(torch.empty(attn_size, **kw))
        _init_v(self.v)

    def project_keys(self, keys):
        return self.key_proj(keys)

    def _query_args(self, query):
        return self.query_proj(query), {"v": self.v}


class LuongAttention(_Attention):
    """Luong attention: ``score`` "dot" (``q . k``), "scaled_dot", "general" (``(W q) . k``)
    or "concat" (``v . tanh(W_q q + W_k k)``, i.e. ``v . tanh(W [q; k])``)."""

    def __init__(self, query_size: int, key_size: int, score: str = "dot", attn_size=None,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        if score in ("dot", "scaled_dot") and query_size != key_size:
            raise ValueError(f"score={score!r} needs query_size == key_size, got {query_size} "
                             f"and {key_size}; use score='general' to project the query")
        if score == "general":
            self.query_proj = nn.Linear(query_size, key_size, bias=False, **kw)
        elif score == "concat":
            attn_size = key_size if attn_size is None else attn_size
            self.query_proj = nn.Linear(query_size, attn_size, bias=False, **kw)
            self.key_proj = nn.Linear(key_size, attn_size, bias=False, **kw)
            self.v = nn.Parameter(torch.empty(attn_size, **kw))
            _init_v(self.v)
        elif score not in ("dot", "scaled_dot"):
            raise ValueError(f"score must be 'dot', 'scaled_dot', 'general' or 'concat', got {score!r}")
        self.score_name = score
        self.score = "additive" if score == "concat" else score

    def project_keys(self, keys):
        return self.key_proj(keys) if self.score_name == "concat" else keys

    def _query_args(self, query):
        if self.score_name == "concat":
            return self.query_proj(query), {"v": self.v}
        if self.score_name == "general":
            return query, {"weight": self.query_proj.weight}
        return query, {}

    def extra_repr(self) -> str:
        return f"score={self.score_name!r}"
