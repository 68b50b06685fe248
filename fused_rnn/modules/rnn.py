"""Drop-in ``LSTM``, ``GRU`` and ``RNN``: torch.nn's classes with a fused ``forward``.

Constructors, parameters, ``state_dict`` keys and every other method are torch.nn's own
(``torch.nn.RNNBase``'s), so a checkpoint loads both ways. They derive from ``RNNBase``,
not from ``torch.nn.LSTM``/``GRU``/``RNN``: torch.compile refuses to trace any instance of
those three (``torch._dynamo.config.allow_rnn``), and tracing ours is the point.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence

from .. import functional as F
from ..ops.recurrence.cells import GATES
from ..ops.recurrence.cells import LSTM as _LSTM_MODE
from ..ops.recurrence.cells import split_flat_weights
from ..ops.variants.function import variant_recurrence
from ..ops.variants.layout import VariantWeights
from ..ops.recurrence.checks import check_float_tensor, shape_str
from .packed import PackedLayout
from .recurrent_weights import (check_heads, check_recurrent_dropout, check_zoneout,
                                drop_connect)


def _unbatch_hx(hx, name: str):
    """Unbatched input takes 2-D states; give them the batch axis of size 1."""
    parts = hx if isinstance(hx, (tuple, list)) else (hx,)
    for p in parts:
        if isinstance(p, torch.Tensor) and p.dim() != 2:
            raise ValueError(f"{name}: for unbatched 2-D input, hx must be 2-D "
                             f"[num_layers * num_directions, hidden], got shape {shape_str(p.shape)}")
    parts = tuple(p.unsqueeze(1) if isinstance(p, torch.Tensor) else p for p in parts)
    return parts if isinstance(hx, (tuple, list)) else parts[0]


class _FusedRecurrence:
    """``forward`` shared by LSTM, GRU and RNN: unpack, run the fused layers, pack back."""

    # Off unless given (recurrent_weights.py and ops/variants/layout.py say what they do);
    # plain attributes, so state_dict stays torch.nn's (headwise blocks aside).
    num_heads = 1
    recurrent_dropout = 0.0
    zoneout = 0.0

    def _init_extras(self, num_heads=1, recurrent_dropout=0.0, zoneout=0.0) -> None:
        """Check and keep the keywords beyond torch.nn's. Headwise blocks take the place of
        each dense ``weight_hh`` (``num_heads > 1``), drawn as torch.nn draws every weight:
        uniform in +-1/sqrt(hidden_size)."""
        self.recurrent_dropout = check_recurrent_dropout(recurrent_dropout)
        self.zoneout = check_zoneout(zoneout, self.proj_size)
        self.num_heads = check_heads(num_heads, self.hidden_size)
        if self.num_heads == 1:
            return
        if self.proj_size > 0:
            raise ValueError("num_heads > 1 (headwise recurrence) does not combine with "
                             f"proj_size > 0, got proj_size={self.proj_size}")
        K, Hh = self.num_heads, self.hidden_size // self.num_heads
        bound = self.hidden_size ** -0.5
        for name in self._flat_weights_names:
            if name.startswith("weight_hh"):
                old = getattr(self, name)
                blocks = torch.empty(K, GATES[self.mode] * Hh, Hh, dtype=old.dtype, device=old.device)
                setattr(self, name, torch.nn.Parameter(blocks.uniform_(-bound, bound)))

    def _forward_weights(self) -> list:
        """``_flat_weights`` as the kernels take them: DropConnect applied; headwise ``W_hh``
        as its blocks (the layers run one recurrence per head, ops/recurrence/headwise.py)."""
        weights = list(self._flat_weights)
        if not (self.training and self.recurrent_dropout):
            return weights
        for i, name in enumerate(self._flat_weights_names):
            if name.startswith("weight_hh"):
                weights[i] = drop_connect(weights[i], self.recurrent_dropout, self.training)
        return weights

    def flatten_parameters(self) -> None:
        # cuDNN's flat weight buffer takes dense W_hh only; the fused kernels never use it.
        if self.num_heads == 1:
            super().flatten_parameters()

    def extra_repr(self) -> str:
        extra = [f"num_heads={self.num_heads}"] * (self.num_heads > 1)
        extra += [f"recurrent_dropout={self.recurrent_dropout}"] * (self.recurrent_dropout > 0)
        extra += [f"zoneout={self.zoneout}"] * (self.zoneout > 0)
        return ", ".join([super().extra_repr()] + extra)

    def forward(self, input, hx=None):
        name = type(self).__name__
        # As torch.nn's forward: torch.func.functional_call swaps the parameters, and
        # _flat_weights must follow them (torch < 2.1 has no such hook).
        if hasattr(self, "_update_flat_weights"):
            self._update_flat_weights()
        lengths, unbatched, batch_first, layout = None, False, self.batch_first, None
        if isinstance(input, PackedSequence):
            layout = PackedLayout(input)
            x, lengths = layout.pad(input.data), layout.lengths
            batch_first = False
        else:
            check_float_tensor("input", input)
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: expected input to be 2-D (unbatched) or 3-D, "
                                 f"got shape {shape_str(input.shape)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            batch_first = batch_first and not unbatched
            if unbatched and hx is not None:
                hx = _unbatch_hx(hx, name)
        output, h_n, c_n = self._run(x, hx, batch_first, lengths)
        if layout is not None:
            output = layout.pack(output)
        elif unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        return output, ((h_n, c_n) if self.mode == _LSTM_MODE else h_n)

    def _run(self, x, hx, batch_first, lengths):
        """The layers on padded input: ``(output, h_n, c_n or None)``. With zoneout, the
        variant family without layer norm (torch.nn's weights and equations otherwise)."""
        if self.zoneout > 0:
            return variant_recurrence(
                self.mode, x, hx, self._variant_weights(), batch_first=batch_first,
                dropout=self.dropout, training=self.training, lengths=lengths,
                zoneout=self.zoneout)
        return F.recurrence(
            self.mode, x, hx, self._forward_weights(), num_layers=self.num_layers, bias=self.bias,
            batch_first=batch_first, dropout=self.dropout, training=self.training,
            bidirectional=self.bidirectional, lengths=lengths)

    def _variant_weights(self):
        """``[[VariantWeights per direction] per layer]`` of the weights the kernels take."""
        D = 2 if self.bidirectional else 1
        return [[VariantWeights(*w[:4]) for w in dirs] for dirs in
                split_flat_weights(self._forward_weights(), self.num_layers, D, self.bias)]


_EXTRAS_DOC = (" Keywords beyond torch.nn's, off by default: ``num_heads`` (headwise, "
               "block-diagonal ``W_hh``), ``recurrent_dropout`` (DropConnect on ``W_hh``), "
               "``zoneout`` (Krueger et al. 2016); see ``fused_rnn.modules.recurrent_weights`` "
               "and ``fused_rnn.ops.variants.layout``.")


class LSTM(_FusedRecurrence, torch.nn.RNNBase):
    __doc__ = "Fused drop-in for :class:`torch.nn.LSTM` (same arguments and parameters)." + _EXTRAS_DOC

    def __init__(self, *args, num_heads: int = 1, recurrent_dropout: float = 0.0,
                 zoneout: float = 0.0, **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._init_extras(num_heads, recurrent_dropout, zoneout)


class GRU(_FusedRecurrence, torch.nn.RNNBase):
    __doc__ = "Fused drop-in for :class:`torch.nn.GRU` (same arguments and parameters)." + _EXTRAS_DOC

    def __init__(self, *args, num_heads: int = 1, recurrent_dropout: float = 0.0,
                 zoneout: float = 0.0, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)
        self._init_extras(num_heads, recurrent_dropout, zoneout)


class RNN(_FusedRecurrence, torch.nn.RNNBase):
    __doc__ = "Fused drop-in for :class:`torch.nn.RNN` (same arguments and parameters)."

    def __init__(self, *args, **kwargs):
        # torch.nn.RNN's own parsing: nonlinearity is the 4th positional argument.
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if self.nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. "
                             "Select from 'tanh' or 'relu'.")
        super().__init__(modes[self.nonlinearity], *args, **kwargs)
