"""Functional entry points: argument checks, then layers and directions stacked over the
per-layer autograd Function on the selected backend.

Shapes use T (steps), B (batch), I (input size), H (hidden size), P (``proj_size`` if
> 0, else H), L (layers), D (directions: 2 if bidirectional, else 1).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from . import autocast, backends
from .ops.attention.checks import check_attention_args
from .ops.attention import reference as attention_reference
from .ops.attention.function import fused_attention
from .ops.recurrence.cells import GATES, GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights, split_flat_weights
from .ops.recurrence.checks import (check_float_tensor, check_like, check_shape,
                                    normalize_lengths, shape_str)
from .ops.recurrence import headwise
from .ops.recurrence.function import recurrence_layer
from .ops.recurrence.library import compiled_layer


def _weight_sizes(mode: str, w: LayerWeights) -> dict:
    """The sizes a backend sees: a headwise layer's calls are one head wide."""
    return {"mode": mode, "input_size": w.w_ih.shape[1],
            "hidden_size": headwise.call_hidden_size(w, GATES[mode]),
            "proj_size": 0 if w.w_hr is None else w.w_hr.shape[0]}


def _layer_runner(mode: str, x: torch.Tensor, w: LayerWeights):
    """``run(reverse, x, h0, c0, w, lengths) -> (y, h_n, c_n)`` on the selected backend.

    Under torch.compile the layers are custom ops (``ops/recurrence/library.py``) and the
    batch size stays out of the choice, so that a new batch size needs no new choice.
    """
    if torch.compiler.is_compiling():
        name = backends.select_name("recurrence", x.device.type, x.dtype,
                                    tuple(_weight_sizes(mode, w).items()))
        run = functools.partial(compiled_layer, name, mode)
    else:
        ops = _backend_ops(mode, x, w, x.shape[1])
        run = functools.partial(recurrence_layer, ops, mode)
        step = _step_of(ops, x, w) if x.shape[0] == 1 else None
        if step is not None:
            run = functools.partial(_one_step_layer, step, mode, run)
    return functools.partial(headwise.run_heads, run) if headwise.is_headwise(w) else run


def _one_step_layer(step, mode, run, reverse, x, h0, c0, w, lengths):
    """A layer over one step (a decoder calling ``nn.GRU`` step by step) as the backend's
    C++ cell ``step``; either direction is that step. With lengths: ``run``, the layer."""
    if lengths is not None:
        return run(reverse, x, h0, c0, w, lengths)
    h, c = step(mode, x[0], h0, c0, w)
    return h.unsqueeze(0), h, c


def _backend_ops(mode: str, x: torch.Tensor, w: LayerWeights, batch: int):
    """The recurrence module of the backend selected for these sizes (eager)."""
    sizes = tuple(_weight_sizes(mode, w).items()) + (("batch", batch),)
    return backends.select_by_sizes("recurrence", x.device, x.dtype, sizes).ops("recurrence")


def _step_of(ops, x: torch.Tensor, w: LayerWeights):
    """The backend module's whole cell step (``cell_step``, its autograd in C++) where it
    has one for x's dtype and these weights (no projection, not headwise), else None."""
    if (x.dtype in getattr(ops, "CELL_STEP_DTYPES", ()) and w.w_hr is None
            and not headwise.is_headwise(w)):
        return ops.cell_step
    return None


def _cell_step(mode: str, x: torch.Tensor, w: LayerWeights):
    """:func:`_step_of` the backend selected for x [B, I] (eager), else None."""
    if torch.compiler.is_compiling():
        return None
    return _step_of(_backend_ops(mode, x, w, x.shape[0]), x, w)


def cell_on_backend(mode: str, x: torch.Tensor, h0, c0, w: LayerWeights):
    """One step of checked arguments, x [B, I]: ``(h', c' or None)`` from the selected
    backend's ``cell_step`` (its autograd in C++) where it has one, else its layer for T=1."""
    step = _cell_step(mode, x, w)
    if step is not None:
        return step(mode, x, h0, c0, w)
    x = x.unsqueeze(0)
    return _layer_runner(mode, x, w)(False, x, h0, c0, w, None)[1:]


def _check_weights(layers, x: torch.Tensor, mode: str) -> None:
    dtype, device = x.dtype, x.device  # x is floating point: so is a weight of its dtype
    for li, dirs in enumerate(layers):
        for d, w in enumerate(dirs):
            for field, t in zip(LayerWeights._fields, w):
                # The message (and its name) only on a mismatch: a decoder checks per step.
                if t is not None and not (isinstance(t, torch.Tensor) and t.dtype is dtype
                                          and t.device == device):
                    name = f"weights[layer {li}{', reverse' if d else ''}].{field}"
                    check_float_tensor(name, t)
                    check_like(name, t, "input", x)
    w0 = layers[0][0]
    if x.shape[-1] != w0.w_ih.shape[1]:
        raise ValueError(
            f"input.size(-1) must be equal to input_size: expected {w0.w_ih.shape[1]}, "
            f"got {x.shape[-1]} (input shape {shape_str(x.shape)})"
        )
    if w0.w_hr is not None and mode != LSTM:
        raise ValueError(f"proj_size > 0 is only supported for LSTM, not {mode}")
    _check_weight_shapes(layers, mode)


# What each weight's shape means, for the error message only.
_WEIGHT_MEANINGS = {"w_ih": "({G} * hidden_size, {inputs})", "w_hh": "({G} * hidden_size, {state})",
                    "b_ih": "({G} * hidden_size,)", "b_hh": "({G} * hidden_size,)",
                    "w_hr": "(proj_size, hidden_size)"}


def _check_weight_shapes(layers, mode: str) -> None:
    """Hand-made weights (the functional API) must fit together as torch.nn's do. Runs on
    every call (a decoder calls a cell per step): messages are built only on a mismatch."""
    G, w0 = GATES[mode], layers[0][0]
    GH = w0.w_ih.shape[0] if w0.w_ih.dim() == 2 else -1
    if GH < 0 or GH % G:
        raise ValueError(f"weights[layer 0].w_ih must be 2-D with {G} * hidden_size rows for "
                         f"{mode}, got shape {shape_str(w0.w_ih.shape)}")
    H = GH // G
    P = w0.w_hr.shape[0] if w0.w_hr is not None else H
    D = len(layers[0])
    for li, dirs in enumerate(layers):
        in_size = w0.w_ih.shape[1] if li == 0 else D * P
        expected = {"w_ih": (GH, in_size), "w_hh": (GH, P), "b_ih": (GH,), "b_hh": (GH,),
                    "w_hr": (P, H)}
        for d, w in enumerate(dirs):
            if headwise.is_headwise(w):
                _check_heads(w, f"weights[layer {li}{', reverse' if d else ''}]", G, H)
                w = w._replace(w_hh=None)
            for field, t in zip(LayerWeights._fields, w):
                if t is not None and tuple(t.shape) != expected[field]:
                    meaning = _WEIGHT_MEANINGS[field].format(
                        G=G, inputs="input_size" if li == 0 else "directions * state size",
                        state="proj_size" if P != H else "hidden_size")
                    check_shape(f"weights[layer {li}{', reverse' if d else ''}].{field}", t,
                                expected[field], meaning)


def _check_heads(w: LayerWeights, name: str, G: int, H: int) -> None:
    """Headwise blocks ``[K, G*Hh, Hh]`` with ``K*Hh = hidden_size`` in place of ``w_hh``."""
    K, GHh, Hh = w.w_hh.shape
    if Hh == 0 or GHh != G * Hh or K * Hh != H:
        raise ValueError(f"{name}.w_hh: headwise blocks must have shape (num_heads, {G} * "
                         f"head_size, head_size) with num_heads * head_size = hidden_size = {H}, "
                         f"got {shape_str(w.w_hh.shape)}")
    if w.w_hr is not None:
        raise ValueError(f"{name}: headwise w_hh does not combine with a projection (w_hr)")


def _initial_state(mode, hx, layers, x):
    """Checked ``(h0 [L*D, B, P], c0 [L*D, B, H] or None)``, zeros when ``hx`` is None."""
    num = len(layers) * len(layers[0])
    w0 = layers[0][0]
    H = w0.w_ih.shape[0] // GATES[mode]
    P = H if w0.w_hr is None else w0.w_hr.shape[0]
    B = x.shape[1]
    if hx is None:
        h0 = x.new_zeros(num, B, P)
        return h0, (x.new_zeros(num, B, H) if mode == LSTM else None)
    if mode == LSTM:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx for LSTM must be a tuple (h_0, c_0) of two tensors, "
                            f"got {type(hx).__name__}")
        h0, c0 = hx
    else:
        if isinstance(hx, (tuple, list)):
            raise TypeError(f"hx for {mode} must be a single tensor h_0, got a {type(hx).__name__}")
        h0, c0 = hx, None
    check_float_tensor("hx[0] (h_0)" if mode == LSTM else "hx (h_0)", h0)
    check_like("h_0", h0, "input", x)
    check_shape("h_0", h0, (num, B, P), "(num_layers * num_directions, batch, "
                + ("proj_size)" if P != H else "hidden_size)"))
    if mode == LSTM:
        check_float_tensor("hx[1] (c_0)", c0)
        check_like("c_0", c0, "input", x)
        check_shape("c_0", c0, (num, B, H), "(num_layers * num_directions, batch, hidden_size)")
    return h0, c0


def time_major_input(input: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """The checked 3-D input of a multi-layer recurrence as [T, B, I]."""
    if input.dim() != 3:
        layout = "[B, T, input_size] (batch_first=True)" if batch_first else "[T, B, input_size]"
        raise ValueError(f"input must be 3-D {layout}, got shape {shape_str(input.shape)}")
    if input.shape[1 if batch_first else 0] == 0:
        raise ValueError("input must have at least one time step (as torch.nn requires), "
                         f"got shape {shape_str(input.shape)}")
    return input.transpose(0, 1) if batch_first else input


def recurrence(mode: str, input: torch.Tensor, hx, weights, *, num_layers: int = 1,
               bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
               training: bool = False, bidirectional: bool = False, lengths=None):
    """Multi-layer LSTM/GRU/RNN over padded input, the common body of :func:`lstm`,
    :func:`gru` and :func:`rnn`.

    ``mode`` is ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``; ``weights`` is a
    module's ``_flat_weights`` (per layer, per direction: ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``).
    ``lengths`` [B] (ints in [1, T]) makes each row stop at its length: outputs past it are
    zero and ``h_n`` is the state at its last step. Returns ``(output, h_n, c_n)``.
    """
    if mode not in GATES:
        raise ValueError(f"mode must be one of {', '.join(GATES)}, got {mode!r}")
    check_float_tensor("input", input)
    amp = autocast.recurrence_dtypes(mode, input, is_cell=False)
    if amp is not None:
        return autocast.run_cast(amp, recurrence, mode, input, hx, weights, num_layers=num_layers,
                                 bias=bias, batch_first=batch_first, dropout=dropout,
                                 training=training, bidirectional=bidirectional, lengths=lengths)
    D = 2 if bidirectional else 1
    layers = split_flat_weights(weights, num_layers, D, bias)
    x = time_major_input(input, batch_first)
    _check_weights(layers, x, mode)
    h0, c0 = _initial_state(mode, hx, layers, x)
    lengths = normalize_lengths(lengths, x.shape[1], x.shape[0])
    run_layer = _layer_runner(mode, x, layers[0][0])
    x, h_n, c_n = stack_layers(run_layer, layers, x, h0, c0, lengths, dropout=dropout,
                               training=training)
    output = x.transpose(0, 1) if batch_first else x
    return output, h_n, c_n


def stack_layers(run_layer, layers, x, h0, c0, lengths, *, dropout: float, training: bool):
    """Layers in order, each direction on the layer's input, the directions' outputs
    concatenated on the feature axis, dropout between layers in training.

    ``run_layer(reverse, x, h0, c0, w, lengths) -> (y, h_n, c_n)`` runs one layer and
    direction (called in the order layer, direction); x is time-major; h0, c0 [L*D, B, ·]
    (c0 None without a cell state). Returns ``(output, h_n [L*D, ...], c_n or None)``.
    """
    D = len(layers[0])
    h_n, c_n = [], []
    for li, dirs in enumerate(layers):
        outs = []
        for d, w in enumerate(dirs):
            k = li * D + d
            y, h, c = run_layer(d == 1, x, h0[k], None if c0 is None else c0[k], w, lengths)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        x = outs[0] if D == 1 else torch.cat(outs, -1)
        if training and dropout > 0 and li < len(layers) - 1:
            x = F.dropout(x, dropout, training=True)
    return x, torch.stack(h_n), (None if c0 is None else torch.stack(c_n))


def lstm(input, hx, weights, *, num_layers=1, bias=True, batch_first=False, dropout=0.0,
         training=False, bidirectional=False, lengths=None):
    """Multi-layer LSTM, as ``torch.nn.LSTM`` computes it, with optional per-row lengths.

    input [T, B, I] ([B, T, I] if ``batch_first``); hx ``(h_0 [L*D, B, P], c_0 [L*D, B, H])``
    or None; weights: ``torch.nn.LSTM(...)._flat_weights``. Returns
    ``(output [T, B, D*P], (h_n [L*D, B, P], c_n [L*D, B, H]))``.

    >>> m = torch.nn.LSTM(8, 16)
    >>> out, (h, c) = lstm(torch.randn(5, 3, 8), None, m._flat_weights, lengths=[5, 2, 4])
    """
    out, h, c = recurrence(LSTM, input, hx, weights, num_layers=num_layers, bias=bias,
                           batch_first=batch_first, dropout=dropout, training=training,
                           bidirectional=bidirectional, lengths=lengths)
    return out, (h, c)


def gru(input, hx, weights, *, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        training=False, bidirectional=False, lengths=None):
    """Multi-layer GRU as ``torch.nn.GRU``; arguments as :func:`lstm`, ``hx`` is
    ``h_0 [L*D, B, H]``. Returns ``(output [T, B, D*H], h_n [L*D, B, H])``."""
    out, h, _ = recurrence(GRU, input, hx, weights, num_layers=num_layers, bias=bias,
                           batch_first=batch_first, dropout=dropout, training=training,
                           bidirectional=bidirectional, lengths=lengths)
    return out, h


def rnn(input, hx, weights, *, nonlinearity="tanh", num_layers=1, bias=True, batch_first=False,
        dropout=0.0, training=False, bidirectional=False, lengths=None):
    """Multi-layer Elman RNN (``nonlinearity`` "tanh" or "relu") as ``torch.nn.RNN``;
    arguments and result as :func:`gru`."""
    modes = {"tanh": RNN_TANH, "relu": RNN_RELU}
    if nonlinearity not in modes:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    out, h, _ = recurrence(modes[nonlinearity], input, hx, weights, num_layers=num_layers,
                           bias=bias, batch_first=batch_first, dropout=dropout,
                           training=training, bidirectional=bidirectional, lengths=lengths)
    return out, h


def cell(mode: str, input: torch.Tensor, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step of a cell, as ``torch.nn.LSTMCell/GRUCell/RNNCell`` compute it.

    input [B, I] or unbatched [I]; hx: ``(h [B, H], c [B, H])`` for LSTM, ``h [B, H]``
    otherwise, or None for zeros. Returns ``(h', c')`` for LSTM, else ``h'``.
    """
    w = LayerWeights(w_ih, w_hh, b_ih, b_hh, None)
    out = _cell_checked_by_the_op(mode, input, hx, w)
    if out is not None:
        return out
    check_float_tensor("input", input)
    amp = autocast.recurrence_dtypes(mode, input, is_cell=True)
    if amp is not None:
        return autocast.run_cast(amp, cell, mode, input, hx, w_ih, w_hh, b_ih, b_hh)
    if input.dim() not in (1, 2):
        raise ValueError(f"{mode} cell: input must be 1-D [input_size] or 2-D [batch, "
                         f"input_size], got shape {shape_str(input.shape)}")
    unbatched = input.dim() == 1
    x = input.reshape(1, -1) if unbatched else input  # [B, I]
    # One layer, one step, straight to the backend's step: the multi-layer path's splitting,
    # stacking and second round of checks cost a decoder ~60 us per call (more than the step).
    _check_weights([[w]], x, mode)
    B, H = x.shape[0], w_hh.shape[1]
    if hx is None:
        h0, c0 = _zero_state(mode, x, H)
    else:
        if mode == LSTM and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError("hx for LSTMCell must be a tuple (h, c) of two tensors")
        parts = tuple(hx) if mode == LSTM else (hx,)
        expected = (H,) if unbatched else (input.shape[0], H)
        for name, p in zip(("hx[0] (h)", "hx[1] (c)") if mode == LSTM else ("hx",), parts):
            check_float_tensor(name, p)
            check_shape(name, p, expected, "(hidden_size,)" if unbatched else "(batch, hidden_size)")
            check_like(name, p, "input", x)
        if unbatched:
            parts = tuple(p.reshape(1, -1) for p in parts)
        h0, c0 = parts if mode == LSTM else (parts[0], None)
    h, c = cell_on_backend(mode, x, h0, c0, w)
    if unbatched:
        h, c = h[0], (c[0] if c is not None else None)
    return (h, c) if mode == LSTM else h


def _zero_state(mode: str, x: torch.Tensor, H: int):
    """torch.nn's missing cell state for x [B, I]: ``(h0, c0 or None)``, zeros of x's dtype."""
    B = x.shape[0]
    return x.new_zeros(B, H), (x.new_zeros(B, H) if mode == LSTM else None)


def _cell_checked_by_the_op(mode: str, input, hx, w: LayerWeights):
    """:func:`cell` of a batched CPU input without autocast, where the selected backend's
    C++ step takes it: that op's checks (shapes, dtypes, devices) stand in for cell's, which
    cost a decoder's step ~8 us. A missing state is zeros of the input's dtype, as torch.nn
    makes it (a decoder's first step, `benchmarks.cell_calls`' "call" row; RNNCell B=1 H=256
    without grad, timeit: 22.8 -> 17.3 us, torch.nn 17.8-19.0). None where this does not
    apply, or where the op refused the arguments: cell's own checks then say what is wrong,
    naming the module's arguments."""
    if not (isinstance(input, torch.Tensor) and input.is_cpu and input.dim() == 2
            and not torch.is_autocast_enabled("cpu")):
        return None
    if mode == LSTM and hx is not None:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            return None
        h0, c0 = hx
    else:
        h0, c0 = hx, None
    try:
        step = _cell_step(mode, input, w)
        if step is None:
            return None
        if hx is None:
            h0, c0 = _zero_state(mode, input, w.w_hh.shape[1])
        h, c = step(mode, input, h0, c0, w)
    except (RuntimeError, TypeError, AttributeError, IndexError):
        return None
    return (h, c) if mode == LSTM else h


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step: see :func:`cell`. Returns ``(h', c')``."""
    return cell(LSTM, input, hx, w_ih, w_hh, b_ih, b_hh)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step: see :func:`cell`. Returns ``h'``."""
    return cell(GRU, input, hx, w_ih, w_hh, b_ih, b_hh)


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman RNN step: see :func:`cell`. Returns ``h'``."""
    modes = {"tanh": RNN_TANH, "relu": RNN_RELU}
    if nonlinearity not in modes:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return cell(modes[nonlinearity], input, hx, w_ih, w_hh, b_ih, b_hh)


def attention(query, keys, values=None, *, score="dot", lengths=None, mask=None, v=None,
              weight=None, scale=None, need_weights=True):
    """Encoder-decoder attention: scores, softmax over the valid keys, weighted values.

    query [B, Tq, Dq] or one decoder step [B, Dq]; keys [B, Tk, Dk]; values [B, Tk, Dv]
    (default: the keys). Valid keys: ``lengths`` [B] (ints in [0, Tk]) or ``mask``
    [B, Tk] bool (True = attend), not both. ``score``:

    - ``"dot"``: ``q . k``; ``"scaled_dot"``: ``q . k * scale`` (default ``1/sqrt(Dk)``);
    - ``"general"``: ``(W q) . k`` with ``weight`` W [Dk, Dq];
    - ``"additive"`` (Bahdanau): ``v . tanh(pq + pk)``, where ``query`` and ``keys`` are the
      projected ``pq = W_q q + b`` [B, Tq, A] and ``pk = W_k k`` [B, Tk, A], ``v`` [A].

    Returns ``(context [B, Tq, Dv], weights [B, Tq, Tk])`` (without the Tq axis for a 2-D
    query); ``weights`` is None with ``need_weights=False``, which spares the fused backends
    from writing them. A query with no valid key gets zero weights and a zero context.

    >>> ctx, w = attention(torch.randn(2, 1, 8), torch.randn(2, 5, 8), lengths=[5, 3])
    """
    check_float_tensor("query", query)
    amp = autocast.attention_dtypes(query)
    if amp is not None:
        return autocast.run_cast(amp, attention, query, keys, values, score=score, lengths=lengths,
                                 mask=mask, v=v, weight=weight, scale=scale,
                                 need_weights=need_weights)
    step = query.dim() == 2
    q = query.unsqueeze(1) if step else query
    values, valid = check_attention_args(q, keys, values, score, lengths, mask, v, weight, scale)
    context, weights = _attention_on_backend(q, keys, values, valid, score, v, weight, scale,
                                             need_weights)
    if step:
        return context.squeeze(1), (None if weights is None else weights.squeeze(1))
    return context, weights


def _attention_on_backend(q, keys, values, valid, score, v, weight, scale, need_weights):
    """The checked attention call on the selected backend: a fused backend's Function (or,
    under torch.compile, its custom op), else the reference's plain PyTorch."""
    static_sizes = {"score": score, "key_size": keys.shape[-1], "value_size": values.shape[-1]}
    if torch.compiler.is_compiling():
        # The sizes that change from call to call stay out of a choice made once.
        name = backends.select_name("attention", q.device.type, q.dtype,
                                    tuple(static_sizes.items()))
        if name != "reference":
            return fused_attention(None, q, keys, values, valid, score, v, weight, scale,
                                   need_weights, compiled_backend=name)
        ops = attention_reference
    else:
        sizes = dict(static_sizes, batch=q.shape[0], query_steps=q.shape[1],
                     key_steps=keys.shape[1])
        ops = backends.select(backends.OpCall("attention", q.device, q.dtype, sizes)).ops("attention")
    if hasattr(ops, "_fwd"):  # a fused backend: its Function, forward and backward
        return fused_attention(ops, q, keys, values, valid, score, v, weight, scale, need_weights)
    context, weights = ops.forward(q, keys, values, valid, score, v, weight, scale)
    return context, (weights if need_weights else None)
