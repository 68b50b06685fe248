"""Drop-in ``LSTM``, ``GRU`` and ``RNN``: torch.nn's classes with a fused ``forward``.

Constructors, parameters, ``state_dict`` keys and every other method are torch.nn's own
(``torch.nn.RNNBase``'s), so a checkpoint loads both ways. They derive from ``RNNBase``,
not from ``torch.nn.LSTM``/``GRU``/``RNN``: torch.compile refuses to trace any instance of
those three (``torch._dynamo.config.allow_rnn``), and tracing ours is the point.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import functional as F
from ..ops.recurrence.cells import LSTM as _LSTM_MODE
from ..ops.recurrence.cells import split_flat_weights
from ..ops.variants.function import variant_recurrence
from ..ops.variants.layout import VariantWeights
from ..ops.recurrence.checks import check_float_tensor, shape_str


def _unbatch_hx(hx, name: str):
    """Unbatched input takes 2-D states; give them the batch axis of size 1."""
    parts = hx if isinstance(hx, (tuple, list)) else (hx,)
    for p in parts:
        if isinstance(p, torch.Tensor) and p.dim() != 2:
            raise ValueError(f"{name}: for unbatched 2-D input, hx must be 2-D "
                             f"[num_layers * num_directions, hidden], got shape {shape_str(p.shape)}")
    parts = tuple(p.unsqueeze(1) if isinstance(p, torch.Tensor) else p for p in parts)
    return parts if isinstance(hx, (tuple, list)) else parts[0]


def _repack(output: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """Padded time-major ``output`` (rows in the caller's order) -> a PackedSequence laid out
    exactly as ``like``, so that unpacking it restores the caller's order."""
    if like.sorted_indices is not None:
        output = output.index_select(1, like.sorted_indices)
        lengths = lengths.index_select(0, like.sorted_indices.cpu())
    data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class _FusedRecurrence:
    """``forward`` shared by LSTM, GRU and RNN: unpack, run the fused layers, pack back."""

    def forward(self, input, hx=None):
        name = type(self).__name__
        lengths, unbatched, batch_first = None, False, self.batch_first
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input)
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
        if lengths is not None:
            output = _repack(output, lengths, input)
        elif unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        return output, ((h_n, c_n) if self.mode == _LSTM_MODE else h_n)

    def _run(self, x, hx, batch_first, lengths):
        """The layers on padded input: ``(output, h_n, c_n or None)``. With zoneout, the
        variant family without layer norm (torch.nn's weights and equations otherwise)."""
        zoneout = getattr(self, "zoneout", 0.0)
        if zoneout > 0:
            return variant_recurrence(
                self.mode, x, hx, self._variant_weights(), batch_first=batch_first,
                dropout=self.dropout, training=self.training, lengths=lengths, zoneout=zoneout)
        return F.recurrence(
            self.mode, x, hx, self._flat_weights, num_layers=self.num_layers, bias=self.bias,
            batch_first=batch_first, dropout=self.dropout, training=self.training,
            bidirectional=self.bidirectional, lengths=lengths)

    def _variant_weights(self):
        """``[[VariantWeights per direction] per layer]`` of torch.nn's weights."""
        D = 2 if self.bidirectional else 1
        return [[VariantWeights(*w[:4]) for w in dirs] for dirs in
                split_flat_weights(self._flat_weights, self.num_layers, D, self.bias)]


class _Zoneout:
    """The ``zoneout=p`` keyword of the fused LSTM and GRU (Krueger et al. 2016; 0 = off):
    a plain attribute, so ``state_dict`` and the rest stay torch.nn's."""

    def _set_zoneout(self, zoneout) -> None:
        if isinstance(zoneout, bool) or not isinstance(zoneout, (int, float)) or not 0 <= zoneout < 1:
            raise ValueError(f"zoneout must be a probability in [0, 1), got {zoneout!r}")
        if zoneout > 0 and getattr(self, "proj_size", 0) > 0:
            raise ValueError(f"zoneout={zoneout} with proj_size={self.proj_size} is not supported: "
                             "zoneout needs proj_size=0")
        self.zoneout = float(zoneout)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        zoneout = getattr(self, "zoneout", 0.0)  # absent from modules pickled before it
        return s + f", zoneout={zoneout}" if zoneout else s


class LSTM(_Zoneout, _FusedRecurrence, torch.nn.RNNBase):
    __doc__ = ("Fused drop-in for :class:`torch.nn.LSTM` (same arguments and parameters), "
               "plus ``zoneout=p`` (keyword, default 0).")

    def __init__(self, *args, **kwargs):
        zoneout = kwargs.pop("zoneout", 0.0)
        super().__init__("LSTM", *args, **kwargs)
        self._set_zoneout(zoneout)


class GRU(_Zoneout, _FusedRecurrence, torch.nn.RNNBase):
    __doc__ = ("Fused drop-in for :class:`torch.nn.GRU` (same arguments and parameters), "
               "plus ``zoneout=p`` (keyword, default 0).")

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        zoneout = kwargs.pop("zoneout", 0.0)
        super().__init__("GRU", *args, **kwargs)
        self._set_zoneout(zoneout)


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
