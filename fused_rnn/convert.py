"""``convert(model)``: swap torch.nn's recurrent modules for the fused ones in place."""

from __future__ import annotations

import torch

from . import modules

_FUSED = {
    torch.nn.LSTM: modules.LSTM, torch.nn.GRU: modules.GRU, torch.nn.RNN: modules.RNN,
    torch.nn.LSTMCell: modules.LSTMCell, torch.nn.GRUCell: modules.GRUCell,
    torch.nn.RNNCell: modules.RNNCell,
}


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Make every ``torch.nn.LSTM/GRU/RNN`` and cell inside ``model`` (``model`` included)
    its fused drop-in, in place, and return ``model``.

    Only the class changes: parameters (the same objects), buffers, hooks and training
    mode stay as they are, so optimizers and checkpoints keep working. Subclasses of the
    torch modules are left alone, since their ``forward`` may differ from torch's.

    >>> model = convert(torch.nn.Sequential(torch.nn.LSTM(8, 16)))
    """
    for m in model.modules():
        fused = _FUSED.get(type(m))
        if fused is not None:
            m.__class__ = fused
    return model
