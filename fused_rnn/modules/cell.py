"""Drop-in ``LSTMCell``, ``GRUCell`` and ``RNNCell``: torch.nn's cells with a fused step."""

from __future__ import annotations

import torch

from .. import functional as F
from ..ops.recurrence.cells import GRU, LSTM, RNN_RELU, RNN_TANH


class _FusedCell:
    _mode = None

    def forward(self, input, hx=None):
        mode = self._mode or (RNN_TANH if self.nonlinearity == "tanh" else RNN_RELU)
        return F.cell(mode, input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class LSTMCell(_FusedCell, torch.nn.LSTMCell):
    __doc__ = "Fused drop-in for :class:`torch.nn.LSTMCell`; returns ``(h', c')``."
    _mode = LSTM


class GRUCell(_FusedCell, torch.nn.GRUCell):
    __doc__ = "Fused drop-in for :class:`torch.nn.GRUCell`; returns ``h'``."
    _mode = GRU


class RNNCell(_FusedCell, torch.nn.RNNCell):
    __doc__ = "Fused drop-in for :class:`torch.nn.RNNCell` (tanh or relu); returns ``h'``."
