"""``LayerNormLSTM`` and ``LayerNormGRU``: torch.nn.LSTM/GRU's arguments, weights and inputs,
with layer norm (Ba et al. 2016) on the gate pre-activations (and the LSTM cell) and
optional zoneout (Krueger et al. 2016). Equations: ``ops/variants/layout.py``.

They are ``RNNBase`` subclasses as the drop-in LSTM/GRU: the torch.nn weights are
registered, named and initialised by torch itself (under one seed they equal
``torch.nn.LSTM``'s), and the norm parameters are added after them:
``layer_norm_ih_l{k}``, ``layer_norm_hh_l{k}`` (gains, 1) and, for LSTM,
``layer_norm_c_weight_l{k}`` (1), ``layer_norm_c_bias_l{k}`` (0), ``_reverse`` suffixed for
the reverse direction.
"""

from __future__ import annotations

import torch

from ..ops.recurrence.cells import GATES
from ..ops.variants.function import variant_recurrence
from ..ops.variants.layout import VariantWeights
from .rnn import _FusedRecurrence

# Norm parameter name stem -> (size in units of hidden_size: gates or 1, initial value, LSTM only)
_NORMS = {"layer_norm_ih": ("gates", 1.0, False), "layer_norm_hh": ("gates", 1.0, False),
          "layer_norm_c_weight": (1, 1.0, True), "layer_norm_c_bias": (1, 0.0, True)}


class _LayerNormRecurrence(_FusedRecurrence, torch.nn.RNNBase):
    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, device=None, dtype=None, zoneout=0.0,
                 recurrent_dropout=0.0, proj_size=0):
        name = type(self).__name__
        if proj_size:
            raise ValueError(f"proj_size is not supported by {name} (got proj_size={proj_size}); "
                             "expected 0")
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)
        self._init_extras(recurrent_dropout=recurrent_dropout, zoneout=zoneout)
        G = GATES[mode]
        for stem, (units, _, lstm_only) in _NORMS.items():
            if lstm_only and mode != "LSTM":
                continue
            n = hidden_size * (G if units == "gates" else units)
            for suffix in self._suffixes():
                self.register_parameter(f"{stem}{suffix}", torch.nn.Parameter(
                    torch.empty(n, device=device, dtype=dtype)))
        self._reset_norms()

    def _suffixes(self):
        dirs = ("", "_reverse") if self.bidirectional else ("",)
        return [f"_l{k}{d}" for k in range(self.num_layers) for d in dirs]

    def _reset_norms(self):
        with torch.no_grad():
            for name, p in self.named_parameters():
                for stem, (_, value, _) in _NORMS.items():
                    if name.startswith(stem + "_l"):
                        p.fill_(value)

    def reset_parameters(self) -> None:
        """torch.nn's initialisation of its weights; gains 1 and shifts 0 for the norms."""
        super().reset_parameters()
        self._reset_norms()

    def _run(self, x, hx, batch_first, lengths):
        lstm = self.mode == "LSTM"
        layers = []
        for dirs, suffixes in zip(self._variant_weights(), self._suffixes_per_layer()):
            layers.append([VariantWeights(
                *w[:4], getattr(self, "layer_norm_ih" + s), getattr(self, "layer_norm_hh" + s),
                getattr(self, "layer_norm_c_weight" + s) if lstm else None,
                getattr(self, "layer_norm_c_bias" + s) if lstm else None)
                for w, s in zip(dirs, suffixes)])
        return variant_recurrence(self.mode, x, hx, layers, batch_first=batch_first,
                                  dropout=self.dropout, training=self.training, lengths=lengths,
                                  zoneout=self.zoneout)

    def _suffixes_per_layer(self):
        D = 2 if self.bidirectional else 1
        s = self._suffixes()
        return [s[k * D:(k + 1) * D] for k in range(self.num_layers)]


class LayerNormLSTM(_LayerNormRecurrence):
    """LSTM with layer norm on ``x W_ih^T``, ``h W_hh^T`` (gains) and the new cell (gain and
    shift) before its tanh, and optional zoneout.

    Arguments as :class:`torch.nn.LSTM` (``proj_size`` excepted), plus ``zoneout=p`` in
    [0, 1): in training each unit keeps its previous h (and, drawn apart, c) with probability
    p; in evaluation the update is mixed with weight p; and ``recurrent_dropout`` (DropConnect
    on ``W_hh``, as the fused LSTM's). Input, ``hx`` and outputs as
    ``torch.nn.LSTM`` (PackedSequence, ``batch_first``, unbatched).

    >>> m = LayerNormLSTM(8, 16, num_layers=2, zoneout=0.1)
    >>> out, (h_n, c_n) = m(torch.randn(5, 3, 8))
    """

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)


class LayerNormGRU(_LayerNormRecurrence):
    """GRU with layer norm on ``x W_ih^T`` and ``h W_hh^T`` (gains; ``b_hn`` stays inside the
    reset product) and optional zoneout; arguments and inputs as :class:`LayerNormLSTM` and
    ``torch.nn.GRU``.

    >>> out, h_n = LayerNormGRU(8, 16)(torch.randn(5, 3, 8))
    """

    def __init__(self, *args, **kwargs):
        super().__init__("GRU", *args, **kwargs)
