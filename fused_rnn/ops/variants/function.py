"""The autograd Function of one variant layer and direction (LayerNorm LSTM/GRU, zoneout),
and the functional entry that stacks layers and directions over it.

The layer runs through the recurrence's autograd Function (``ops/recurrence/function.py``),
which knows nothing of the math; the zoneout keeps are data passed along, with no gradient.
"""

from __future__ import annotations

import functools

import torch

from ... import autocast, backends
from ...functional import _check_weights, _initial_state, stack_layers, time_major_input
from ..recurrence import headwise
from ..recurrence.cells import GATES, GRU, LSTM, LayerWeights
from ..recurrence.function import run_layer
from ..recurrence.checks import check_float_tensor, check_like, check_shape, normalize_lengths
from .layout import VariantWeights, draw_keeps
from .library import compiled_variant_layer

def variant_layer(ops, mode, reverse, x, h0, c0, w: VariantWeights, lengths=None,
                  keep_h=None, keep_c=None):
    """One layer and direction through the backend module ``ops`` (the recurrence's
    :class:`~fused_rnn.ops.recurrence.function.LayerFunction`, the keeps as its extras).

    x [T, B, I]; h0, c0 [B, H] (c0 None for GRU); lengths [B] int64 or None; keep_h,
    keep_c [T, B, H] or None. Returns ``(y [T, B, H], h_n [B, H], c_n [B, H] or None)``.
    """
    return run_layer(ops, mode, reverse, x, h0, c0, w, lengths, (keep_h, keep_c))


def _check_layer_norm_weights(layers, x: torch.Tensor, mode: str) -> None:
    """The norm gains and shifts: all present or all absent, float like x, sized G*H or H."""
    G = GATES[mode]
    H = layers[0][0].w_ih.shape[0] // G
    ln = layers[0][0].layer_norm
    wanted = {"ln_ih": ((G * H,), f"({G} * hidden_size,)"), "ln_hh": ((G * H,), f"({G} * hidden_size,)")}
    if mode == LSTM:
        wanted.update(ln_c_weight=((H,), "(hidden_size,)"), ln_c_bias=((H,), "(hidden_size,)"))
    for li, dirs in enumerate(layers):
        for d, w in enumerate(dirs):
            where = f"weights[layer {li}{', reverse' if d else ''}]"
            for field in ("ln_ih", "ln_hh", "ln_c_weight", "ln_c_bias"):
                t = getattr(w, field)
                if (t is not None) != (ln and field in wanted):
                    need = ("given" if ln and field in wanted else "None") + (
                        f" ({mode} with layer norm)" if ln else " (no layer norm: ln_ih is None"
                        " in layer 0)")
                    raise ValueError(f"{where}.{field} must be {need}, got "
                                     f"{'None' if t is None else 'a tensor'}")
                if t is not None:
                    check_float_tensor(f"{where}.{field}", t)
                    check_like(f"{where}.{field}", t, "input", x)
                    check_shape(f"{where}.{field}", t, *wanted[field])


def _layer_runner(mode: str, x: torch.Tensor, w: VariantWeights, zoneout: float):
    """As ``functional._layer_runner``: custom ops under torch.compile (``library.py``),
    with the batch size out of the backend choice, else the autograd Function."""
    sizes = {"mode": mode, "input_size": w.w_ih.shape[1],
             "hidden_size": headwise.call_hidden_size(w, GATES[mode]),
             "layer_norm": w.layer_norm, "zoneout": zoneout}
    if torch.compiler.is_compiling():
        name = backends.select_name("variants", x.device.type, x.dtype, tuple(sizes.items()))
        run = functools.partial(compiled_variant_layer, name, mode)
    else:
        sizes["batch"] = x.shape[1]
        ops = backends.select(backends.OpCall("variants", x.device, x.dtype, sizes)).ops("variants")
        run = functools.partial(variant_layer, ops, mode)
    return functools.partial(headwise.run_heads, run) if headwise.is_headwise(w) else run


def variant_recurrence(mode: str, input: torch.Tensor, hx, layers, *, batch_first: bool = False,
                       dropout: float = 0.0, training: bool = False, lengths=None,
                       zoneout: float = 0.0):
    """Multi-layer LayerNorm LSTM/GRU and/or zoneout LSTM/GRU over padded input.

    ``mode`` is ``"LSTM"`` or ``"GRU"``; ``layers`` is ``[[VariantWeights per direction]
    per layer]`` (one direction, or two for bidirectional; ``ln_ih`` None everywhere means no
    layer norm). input [T, B, I] ([B, T, I] if ``batch_first``); hx as torch.nn's LSTM/GRU
    or None; ``lengths`` [B] ints in [1, T]. ``zoneout`` p in [0, 1): in training each layer
    and direction draws Bernoulli(p) keep masks for h (and then c), in the order layer,
    direction (inter-layer dropout draws after both directions of a layer); in evaluation
    the keeps are p. Returns ``(output [T, B, D*H], h_n [L*D, B, H], c_n [L*D, B, H] or
    None)``.

    >>> w = VariantWeights(torch.randn(64, 8), torch.randn(64, 16), ln_ih=torch.ones(64),
    ...                    ln_hh=torch.ones(64), ln_c_weight=torch.ones(16), ln_c_bias=torch.zeros(16))
    >>> out, h_n, c_n = variant_recurrence("LSTM", torch.randn(5, 3, 8), None, [[w]], zoneout=0.1)
    """
    if mode not in (LSTM, GRU):
        raise ValueError(f"mode must be {LSTM!r} or {GRU!r}, got {mode!r}")
    if not isinstance(zoneout, (int, float)) or not 0 <= zoneout < 1:
        raise ValueError(f"zoneout must be a probability in [0, 1), got {zoneout!r}")
    check_float_tensor("input", input)
    amp = autocast.recurrence_dtypes(mode, input, is_cell=False)
    if amp is not None:
        return autocast.run_cast(amp, variant_recurrence, mode, input, hx, layers,
                                 batch_first=batch_first, dropout=dropout, training=training,
                                 lengths=lengths, zoneout=zoneout)
    x = time_major_input(input, batch_first)
    layers = [[VariantWeights(*w) for w in dirs] for dirs in layers]
    plain = [[LayerWeights(*w[:4]) for w in dirs] for dirs in layers]
    _check_weights(plain, x, mode)
    _check_layer_norm_weights(layers, x, mode)
    h0, c0 = _initial_state(mode, hx, plain, x)
    lengths = normalize_lengths(lengths, x.shape[1], x.shape[0])
    if headwise.is_headwise(layers[0][0]) and layers[0][0].layer_norm:
        raise ValueError("headwise w_hh does not combine with layer norm (the norms over all "
                         "gates would couple the heads)")
    run = _layer_runner(mode, x, layers[0][0], zoneout)
    H = plain[0][0].w_ih.shape[0] // GATES[mode]

    def run_layer(reverse, x, h0, c0, w, lengths):
        keep_h, keep_c = draw_keeps(zoneout, training, (x.shape[0], x.shape[1], H), mode == LSTM, x)
        return run(reverse, x, h0, c0, w, lengths, keep_h, keep_c)

    x, h_n, c_n = stack_layers(run_layer, layers, x, h0, c0, lengths, dropout=dropout,
                               training=training)
    return (x.transpose(0, 1) if batch_first else x), h_n, c_n
