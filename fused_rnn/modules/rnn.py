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
        output, h_n, c_n = F.recurrence(
            self.mode, x, hx, self._flat_weights, num_layers=self.num_layers, bias=self.bias,
            batch_first=batch_first, dropout=self.dropout, training=self.training,
            bidirectional=self.bidirectional, lengths=lengths)
        if lengths is not None:
            output = _repack(output, lengths, input)
        elif unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        return output, ((h_n, c_n) if self.mode == _LSTM_MODE else h_n)


class LSTM(_FusedRecurrence, torch.nn.RNNBase):
    __doc__ = "Fused drop-in for :class:`torch.nn.LSTM` (same arguments and parameters)."

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)


class GRU(_FusedRecurrence, torch.nn.RNNBase):
    __doc__ = "Fused drop-in for :class:`torch.nn.GRU` (same arguments and parameters)."

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


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
