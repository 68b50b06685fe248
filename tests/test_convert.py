"""convert(): torch.nn recurrent modules become the fused ones in place, same parameters."""

import torch

import fused_rnn
from fused_rnn.testing import assert_close, randn


class Seq2Vec(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.blocks = torch.nn.ModuleList([torch.nn.GRU(12, 5), torch.nn.RNNCell(5, 5)])
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x):
        y, _ = self.encoder(x)
        y, h = self.blocks[0](y.transpose(0, 1))
        return self.head(self.blocks[1](y[-1], h[0]))


class MyLSTM(torch.nn.LSTM):
    """A user subclass whose forward may differ from torch's: left alone."""


def test_convert_swaps_in_place_keeping_parameters():
    model = Seq2Vec().double()
    x = randn(3, 7, 4, dtype=torch.float64)
    before = model(x)
    params = {n: p for n, p in model.named_parameters()}
    assert fused_rnn.convert(model) is model
    assert type(model.encoder) is fused_rnn.LSTM
    assert type(model.blocks[0]) is fused_rnn.GRU
    assert type(model.blocks[1]) is fused_rnn.RNNCell
    assert all(p is params[n] for n, p in model.named_parameters())
    assert_close(model(x), before, rtol=1e-7, atol=1e-9, name="model output")


def test_convert_root_module_and_leaves_subclasses():
    root = fused_rnn.convert(torch.nn.GRUCell(3, 4))
    assert type(root) is fused_rnn.GRUCell
    sub = fused_rnn.convert(torch.nn.Sequential(MyLSTM(3, 4)))
    assert type(sub[0]) is MyLSTM
