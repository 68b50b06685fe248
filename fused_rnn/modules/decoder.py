"""Attention decoders with input feeding (Bahdanau et al. 2015; Luong et al. 2015).

:class:`AttentionDecoderCell` is one decoder step: attention over the encoder states from
the previous decoder state, the context concatenated to the step's input, the cell.
:class:`AttentionDecoder` runs it over a target sequence (teacher forcing) or greedily.

Parameters keep torch.nn's layout, so a decoder built from torch.nn parts loads into it:
``attention.*`` as :class:`~fused_rnn.AdditiveAttention` / :class:`~fused_rnn.LuongAttention`
hold them, and ``cell.*`` as a ``torch.nn.LSTMCell`` / ``GRUCell`` of input size
``input_size + value_size``: the first ``input_size`` columns of ``cell.weight_ih`` meet the
input, the last ``value_size`` the context.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

from .. import _native
from .. import functional as F
from ..ops.attention.checks import check_attention_args
from ..ops.recurrence.cells import GRU, LSTM, LayerWeights
from ..ops.recurrence.checks import (check_float_tensor, check_like, check_shape,
                                     normalize_lengths, shape_str)
from .attention import AdditiveAttention, LuongAttention
from .cell import GRUCell, LSTMCell

_CELLS = {"lstm": LSTMCell, "gru": GRUCell}


@contextlib.contextmanager
def weights_unchanged():
    """A scope in which no weight is written except by in-place ops (an optimizer's
    ``p.add_``), never through ``.data``: the cpu backend then packs each cell's weights
    once and reuses them while their version counters stay the same, instead of packing
    them on every step. :class:`AttentionDecoder` decodes inside one; wrap a hand-written
    loop of :class:`AttentionDecoderCell` (or of cells) steps in it for the same effect.

    >>> with weights_unchanged():
    ...     for x in xs:
    ...         state, ctx, w = step(x, state, keys, pk)
    """
    scope = None
    if _native.cpu_available() is None and not torch.compiler.is_compiling():
        scope = getattr(torch.ops.fused_rnn, "panel_cache_scope", None)
    if scope is None:
        yield
        return
    scope(True)
    try:
        yield
    finally:
        scope(False)


_LUONG = ("dot", "scaled_dot", "general", "concat")


class AttentionDecoderCell(nn.Module):
    """One step of an attention decoder with input feeding.

    From the previous state ``s`` (``h`` of an LSTM's ``(h, c)``)::

        context, weights = attention(s, keys)     # softmax over the valid source steps
        s' = cell([input; context], s)

    Args:
        input_size: size of the step's input (e.g. the embedding of the previous token).
        hidden_size: the cell's state size; also the attention's query size.
        key_size: size of the encoder states (the keys).
        attn_size: the additive score's hidden size (default ``hidden_size``).
        value_size: size of the values averaged into the context (default ``key_size``).
        cell: ``"lstm"`` or ``"gru"``.
        score: ``"additive"`` (Bahdanau: ``v . tanh(W_q s + b + W_k k_j)``) or a Luong score,
            ``"dot"``, ``"scaled_dot"``, ``"general"`` (``(W s) . k_j``) or ``"concat"``.
        bias: biases of the cell and of the additive score's query projection.

    Shapes: input [B, input_size]; state ``(h, c)`` [B, hidden_size] each (LSTM) or ``h``
    (GRU), None for zeros; keys [B, Tk, key_size]; values [B, Tk, value_size] (default the
    keys); ``lengths`` [B] or ``mask`` [B, Tk] (True = attend) select the valid keys.
    ``projected_keys``: :meth:`project_keys` of the keys, computed once per source and
    passed to every step. Returns ``(state', context [B, value_size], weights [B, Tk])``;
    weights is None with ``need_weights=False``.

    >>> step = AttentionDecoderCell(32, 64, 48)
    >>> keys = torch.randn(2, 7, 48)
    >>> pk = step.project_keys(keys)
    >>> (h, c), ctx, w = step(torch.randn(2, 32), None, keys, pk, lengths=[7, 4])

    A loop of steps is faster on the cpu backend inside ``with step.weights_unchanged():``
    (the cell's weights are then packed once, not per step; see :func:`weights_unchanged`),
    as :class:`AttentionDecoder` runs it.
    """

    def __init__(self, input_size: int, hidden_size: int, key_size: int,
                 attn_size: Optional[int] = None, *, value_size: Optional[int] = None,
                 cell: str = "lstm", score: str = "additive", bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        kw = {"device": device, "dtype": dtype}
        value_size = key_size if value_size is None else value_size
        if score == "additive":
            self.attention = AdditiveAttention(hidden_size, key_size, attn_size or hidden_size,
                                               bias=bias, **kw)
        elif score in _LUONG:
            self.attention = LuongAttention(hidden_size, key_size, score, attn_size, **kw)
        else:
            raise ValueError(f"score must be 'additive' or one of {', '.join(map(repr, _LUONG))}, "
                             f"got {score!r}")
        # Created after the attention, as a hand-written decoder would: same seed, same weights.
        self.cell = _CELLS[cell](input_size + value_size, hidden_size, bias=bias, **kw)
        self.input_size, self.hidden_size, self.value_size = input_size, hidden_size, value_size
        self.cell_type, self.score = cell, score

    # ``with step.weights_unchanged(): <loop of steps>``: see the module's weights_unchanged.
    weights_unchanged = staticmethod(weights_unchanged)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [B, Tk, key_size] -> what each step scores against; compute once per source."""
        return self.attention.project_keys(keys)

    def forward(self, input: torch.Tensor, state, keys: torch.Tensor,
                projected_keys: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None,
                lengths=None, mask: Optional[torch.Tensor] = None, need_weights: bool = True):
        state = self._checked_state(input, state)
        h = state[0] if self.cell_type == "lstm" else state
        if values is not None and (values.dim() != 3 or values.shape[-1] != self.value_size):
            raise ValueError(f"values must have shape (batch, keys' steps, {self.value_size}) = "
                             f"(.., value_size), got {shape_str(values.shape)}")
        if torch.compiler.is_compiling() or torch.is_autocast_enabled(input.device.type):
            # The general entry points: custom ops while tracing, casts under autocast.
            context, weights = self.attention(h, keys, values=values, lengths=lengths, mask=mask,
                                              projected_keys=projected_keys,
                                              need_weights=need_weights)
            return self.cell(torch.cat([input, context], -1), state), context, weights
        return self._step(input, state, h, keys, projected_keys, values, lengths, mask,
                          need_weights)

    def _step(self, input, state, h, keys, pk, values, lengths, mask, need_weights):
        """The step on the backends' autograd Functions, past the general entry points'
        per-call work (the checks of every weight, a backend choice per op: measured ~130 us
        a step at B=16, as much as the kernels). The weights are this module's own; what
        changes per call is checked here."""
        att = self.attention
        q, extra = att._query_args(h)
        pk = att.project_keys(keys) if pk is None else pk
        q = q.unsqueeze(1)
        values, valid = check_attention_args(q, pk, keys if values is None else values, att.score,
                                             lengths, mask, extra.get("v"), extra.get("weight"))
        context, weights = F._attention_on_backend(q, pk, values, valid, att.score, extra.get("v"),
                                                   extra.get("weight"), None, need_weights)
        context = context.squeeze(1)
        cell = self.cell
        check_like("input", input, "cell.weight_ih", cell.weight_ih)
        x = torch.cat([input, context], -1)
        w = LayerWeights(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, None)
        mode = LSTM if self.cell_type == "lstm" else GRU
        h0, c0 = state if mode == LSTM else (state, None)
        h1, c1 = F.cell_on_backend(mode, x, h0, c0, w)
        return ((h1, c1) if mode == LSTM else h1), context, (
            None if weights is None else weights.squeeze(1))

    def _checked_state(self, input, state):
        check_float_tensor("input", input)
        if input.dim() != 2 or input.shape[1] != self.input_size:
            raise ValueError(f"input must have shape (batch, {self.input_size}) = (batch, "
                             f"input_size), got {shape_str(input.shape)}")
        expected = (input.shape[0], self.hidden_size)
        lstm = self.cell_type == "lstm"
        if state is None:
            h = input.new_zeros(expected)
            return (h, torch.zeros_like(h)) if lstm else h
        if lstm and not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise TypeError("state of an LSTM decoder must be a tuple (h, c) of two tensors [batch, "
                            f"hidden_size], got {type(state).__name__}")
        if not lstm and not isinstance(state, torch.Tensor):
            raise TypeError(f"state of a GRU decoder must be a tensor h [batch, hidden_size], got "
                            f"{type(state).__name__}")
        for name, t in zip(("state[0] (h)", "state[1] (c)") if lstm else ("state",),
                           state if lstm else (state,)):
            check_float_tensor(name, t)
            check_like(name, t, "input", input)
            check_shape(name, t, expected, "(batch, hidden_size)")
        return tuple(state) if lstm else state

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"value_size={self.value_size}, cell={self.cell_type!r}, score={self.score!r}")


class AttentionDecoder(nn.Module):
    """An :class:`AttentionDecoderCell` over a whole target sequence or greedily.

    Args:
        cell: the decoder step.
        embedding: tokens [B] (int64) -> inputs [B, input_size], e.g. an ``nn.Embedding``
            (any callable). None: inputs are given as vectors.
        output: per-step features ``[h'; context]`` [B, hidden_size + value_size] -> logits
            [B, V], e.g. an ``nn.Linear`` (any callable). None: :meth:`forward` returns the
            features.

    The submodules keep their names (``cell.*``, ``embedding.*``, ``output.*``).

    >>> dec = AttentionDecoder(AttentionDecoderCell(16, 32, 24, cell="gru"),
    ...                        nn.Embedding(10, 16), nn.Linear(32 + 24, 10))
    >>> keys = torch.randn(2, 5, 24)
    >>> logits, state, w = dec(torch.randint(0, 10, (2, 4)), None, keys, lengths=[5, 3])
    >>> tokens, w = dec.greedy(torch.tensor([1, 1]), None, keys, 6, lengths=[5, 3], eos=2)
    """

    def __init__(self, cell: AttentionDecoderCell, embedding: Optional[Callable] = None,
                 output: Optional[Callable] = None):
        super().__init__()
        if not isinstance(cell, AttentionDecoderCell):
            raise TypeError(f"cell must be an AttentionDecoderCell, got {type(cell).__name__}")
        self.cell, self.embedding, self.output = cell, embedding, output

    def _source(self, keys, projected_keys, lengths, mask):
        """Per source, once: the projected keys, and the lengths as a mask (one check)."""
        check_float_tensor("keys", keys)
        if keys.dim() != 3:
            raise ValueError(f"keys must be 3-D [batch, steps, key_size], got shape "
                             f"{shape_str(keys.shape)}")
        pk = self.cell.project_keys(keys) if projected_keys is None else projected_keys
        if lengths is not None:
            if mask is not None:
                raise ValueError("give lengths or mask, not both")
            B, Tk = keys.shape[:2]
            lengths = normalize_lengths(lengths, B, Tk, allow_zero=True).to(keys.device)
            mask = torch.arange(Tk, device=keys.device) < lengths.unsqueeze(1)
        return pk, mask

    def _embed(self, tokens_or_inputs):
        return tokens_or_inputs if self.embedding is None else self.embedding(tokens_or_inputs)

    def _features(self, state, context):
        h = state[0] if self.cell.cell_type == "lstm" else state
        return torch.cat([h, context], -1)

    def forward(self, inputs: torch.Tensor, state, keys: torch.Tensor, *,
                projected_keys: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None,
                lengths=None, mask: Optional[torch.Tensor] = None, need_weights: bool = True):
        """Teacher forcing over ``inputs``: tokens [B, T] (with an embedding) or vectors
        [B, T, input_size], step t's input (the targets shifted right: BOS, y_1, ...).

        Returns ``(outputs [B, T, V], state, weights [B, T, Tk])``: outputs are the logits
        (the features ``[h'; context]`` without an output layer); weights is None with
        ``need_weights=False``.
        """
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != (2 if self.embedding is not None else 3):
            want = "tokens [batch, steps]" if self.embedding is not None else "[batch, steps, input_size]"
            got = shape_str(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"inputs must be {want}, got {got}")
        pk, mask = self._source(keys, projected_keys, lengths, mask)
        xs = self._embed(inputs)
        outputs, weights = [], []
        with weights_unchanged():
            for t in range(xs.shape[1]):
                state, context, w = self.cell(xs[:, t], state, keys, pk, values, mask=mask,
                                              need_weights=need_weights)
                features = self._features(state, context)
                outputs.append(features if self.output is None else self.output(features))
                weights.append(w)
        return (torch.stack(outputs, 1), state,
                torch.stack(weights, 1) if need_weights else None)

    def greedy(self, start: torch.Tensor, state, keys: torch.Tensor, steps: int, *,
               projected_keys: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None,
               lengths=None, mask: Optional[torch.Tensor] = None, eos: Optional[int] = None,
               next_input: Optional[Callable] = None):
        """Greedy decoding for up to ``steps`` steps (run it under ``torch.no_grad()``).

        With an embedding and an output layer: ``start`` is the first token [B]; each step
        takes the argmax of the logits as the next token and its embedding as the next
        input. Returns ``(tokens [B, n] int64, weights [B, n, Tk])``; with ``eos`` it stops
        once every row has emitted it (n <= steps; a row's tokens after its eos are kept).

        With ``next_input(h', context) -> [B, input_size]`` (a callable, e.g. for
        continuous outputs): ``start`` is the first input [B, input_size], each step's
        input is the callable's result, and the first result is the stack of them
        [B, n, input_size]; ``eos`` is not used.
        """
        if next_input is None and (self.embedding is None or self.output is None):
            raise ValueError("greedy decoding needs an embedding and an output layer, or a "
                             "next_input(h, context) callable")
        if next_input is not None and eos is not None:
            raise ValueError("eos is for token decoding; with next_input, stop by steps")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        pk, mask = self._source(keys, projected_keys, lengths, mask)
        x = start if next_input is not None else self.embedding(start)
        emitted, weights = [], []
        done = None
        with weights_unchanged():
            for _ in range(steps):
                state, context, w = self.cell(x, state, keys, pk, values, mask=mask)
                weights.append(w)
                if next_input is not None:
                    x = next_input(state[0] if self.cell.cell_type == "lstm" else state, context)
                    emitted.append(x)
                    continue
                token = self.output(self._features(state, context)).argmax(-1)
                emitted.append(token)
                if eos is not None:
                    done = (token == eos) if done is None else done | (token == eos)
                    if bool(done.all()):
                        break
                x = self.embedding(token)
        return torch.stack(emitted, 1), torch.stack(weights, 1)
