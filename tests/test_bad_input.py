"""Wrong calls fail early with an error that names the argument and what was expected."""

import pytest
import torch

import fused_rnn
from fused_rnn import functional as F

T, B, I, H = 5, 3, 4, 6


def lstm():
    return fused_rnn.LSTM(I, H, num_layers=2)


@pytest.mark.parametrize("call,exc,match", [
    pytest.param(lambda: lstm()(torch.randn(T, B, I + 1)), ValueError,
                 r"input.size\(-1\) must be equal to input_size: expected 4, got 5", id="input-size"),
    pytest.param(lambda: lstm()(torch.randn(T, B, 2, I)), ValueError, r"2-D .* or 3-D", id="input-rank"),
    pytest.param(lambda: lstm()(torch.randn(0, B, I)), ValueError,
                 r"at least one time step .* got shape \(0, 3, 4\)", id="zero-steps"),
    pytest.param(lambda: fused_rnn.GRU(I, H, batch_first=True)(torch.randn(B, 0, I)), ValueError,
                 "at least one time step", id="zero-steps-batch-first"),
    pytest.param(lambda: lstm()(torch.randint(0, 3, (T, B, I))), TypeError,
                 "input must be a floating-point tensor", id="integer-input"),
    pytest.param(lambda: lstm()(torch.randn(T, B, I, dtype=torch.complex64)), TypeError,
                 "input must be a floating-point tensor", id="complex-input"),
    pytest.param(lambda: lstm()(torch.randn(T, B, I, dtype=torch.float64)), TypeError,
                 r"weights\[layer 0\]\.w_ih has dtype torch.float32 but input has dtype torch.float64",
                 id="mixed-dtype"),
    pytest.param(lambda: lstm()(torch.randn(T, B, I), (torch.randn(2, B, H), torch.randn(2, B, H, dtype=torch.float64))),
                 TypeError, "c_0 has dtype torch.float64", id="hx-dtype"),
    pytest.param(lambda: lstm()(torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(2, B, H))),
                 ValueError, r"h_0 must have shape \(2, 3, 6\) = \(num_layers \* num_directions, batch, "
                             r"hidden_size\), got \(1, 3, 6\)", id="h0-shape"),
    pytest.param(lambda: lstm()(torch.randn(T, B, I), (torch.randn(2, B, H), torch.randn(2, B + 1, H))),
                 ValueError, r"c_0 must have shape \(2, 3, 6\)", id="c0-shape"),
    pytest.param(lambda: lstm()(torch.randn(T, B, I), torch.randn(2, B, H)), TypeError,
                 r"hx for LSTM must be a tuple \(h_0, c_0\)", id="missing-c0"),
    pytest.param(lambda: fused_rnn.GRU(I, H)(torch.randn(T, B, I), (torch.randn(1, B, H),)), TypeError,
                 "hx for GRU must be a single tensor", id="gru-tuple-hx"),
    pytest.param(lambda: fused_rnn.LSTM(I, H, proj_size=2)(torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(1, B, H))),
                 ValueError, r"h_0 must have shape \(1, 3, 2\) = .*proj_size", id="proj-h0-shape"),
    pytest.param(lambda: fused_rnn.GRU(I, H)(torch.randn(T, I), torch.randn(1, B, H)), ValueError,
                 "unbatched 2-D input, hx must be 2-D", id="unbatched-3d-hx"),
    pytest.param(lambda: lstm()(torch.randn(T, B, I, device="meta")), RuntimeError,
                 "is on cpu but input is on meta", id="mixed-device"),
    pytest.param(lambda: fused_rnn.GRU(I, H)(torch.randn(T, B, I), torch.randn(1, B, H, device="meta")),
                 RuntimeError, "h_0 is on meta but input is on cpu", id="hx-device"),
])
def test_module_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _gru_call(lengths):
    m = torch.nn.GRU(I, H)
    return F.gru(torch.randn(T, B, I), None, m._flat_weights, lengths=lengths)


@pytest.mark.parametrize("lengths,exc,match", [
    pytest.param([T, 2, T + 1], ValueError, r"lengths must lie in \[1, 5\].*to 6", id="too-long"),
    pytest.param([T, 0, 2], ValueError, r"lengths must lie in \[1, 5\].*from 0", id="zero"),
    pytest.param([T, -1, 2], ValueError, r"lengths must lie in \[1, 5\]", id="negative"),
    pytest.param([T, 2], ValueError, r"lengths must be 1-D with one entry per batch row, shape \(3,\)", id="wrong-size"),
    pytest.param(torch.ones(B, 1, dtype=torch.long), ValueError, "lengths must be 1-D", id="2-d"),
    pytest.param(torch.tensor([5.0, 2.0, 1.0]), TypeError, "lengths must have an integer dtype", id="float"),
])
def test_functional_bad_lengths(lengths, exc, match):
    with pytest.raises(exc, match=match):
        _gru_call(lengths)


@pytest.mark.parametrize("call,exc,match", [
    pytest.param(lambda: fused_rnn.LSTMCell(I, H)(torch.randn(2, B, I)), ValueError,
                 r"input must be 1-D \[input_size\] or 2-D", id="cell-rank"),
    pytest.param(lambda: fused_rnn.LSTMCell(I, H)(torch.randn(B, I + 2)), ValueError,
                 "input.size\\(-1\\) must be equal to input_size", id="cell-input-size"),
    pytest.param(lambda: fused_rnn.GRUCell(I, H)(torch.randn(B, I), torch.randn(B + 1, H)), ValueError,
                 r"hx must have shape \(3, 6\) = \(batch, hidden_size\)", id="cell-hx-shape"),
    pytest.param(lambda: fused_rnn.LSTMCell(I, H)(torch.randn(B, I), torch.randn(B, H)), TypeError,
                 r"hx for LSTMCell must be a tuple \(h, c\)", id="cell-missing-c"),
    pytest.param(lambda: fused_rnn.RNNCell(I, H)(torch.randn(I), torch.randn(B, H)), ValueError,
                 r"hx must have shape \(6,\) = \(hidden_size,\)", id="cell-unbatched-hx"),
    pytest.param(lambda: F.rnn(torch.randn(T, B, I), None, torch.nn.RNN(I, H)._flat_weights, nonlinearity="gelu"),
                 ValueError, "nonlinearity must be 'tanh' or 'relu'", id="nonlinearity"),
    pytest.param(lambda: F.lstm(torch.randn(T, B, I), None, torch.nn.LSTM(I, H)._flat_weights[:3]),
                 ValueError, r"weights: expected 4 or 5 tensors per layer", id="weights-count"),
])
def test_cell_and_functional_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


CELL_BAD = {
    "integer-input": (lambda: fused_rnn.GRUCell(I, H)(torch.randint(0, 3, (B, I))), TypeError,
                      "input must be a floating-point tensor, got dtype torch.int64"),
    "complex-input": (lambda: fused_rnn.RNNCell(I, H)(torch.randn(B, I, dtype=torch.complex64)),
                      TypeError, "input must be a floating-point tensor"),
    "input-dtype": (lambda: fused_rnn.LSTMCell(I, H)(torch.randn(B, I, dtype=torch.float64)),
                    TypeError, r"w_ih has dtype torch.float32 but input has dtype torch.float64"),
    "hx-dtype": (lambda: fused_rnn.LSTMCell(I, H)(torch.randn(B, I), (torch.randn(B, H).double(),
                                                                       torch.randn(B, H))),
                 TypeError, r"hx\[0\] \(h\) has dtype torch.float64 but input has dtype torch.float32"),
    "input-device": (lambda: fused_rnn.GRUCell(I, H)(torch.randn(B, I, device="meta")), RuntimeError,
                     "w_ih is on cpu but input is on meta"),
    "hx-device": (lambda: fused_rnn.GRUCell(I, H)(torch.randn(B, I), torch.randn(B, H, device="meta")),
                  RuntimeError, "hx is on meta but input is on cpu"),
    "bias-device": (lambda: F.lstm_cell(torch.randn(B, I), None, torch.randn(4 * H, I), torch.randn(4 * H, H),
                                        torch.randn(4 * H, device="meta"), torch.randn(4 * H)),
                    RuntimeError, r"b_ih is on meta but input is on cpu"),
    "lstm-c0-none": (lambda: lstm()(torch.randn(T, B, I), (torch.zeros(2, B, H), None)), TypeError,
                     r"hx\[1\] \(c_0\) must be a torch.Tensor, got NoneType"),
    "gru-h0-shape": (lambda: fused_rnn.GRU(I, H, bidirectional=True)(torch.randn(T, B, I), torch.randn(1, B, H)),
                     ValueError, r"h_0 must have shape \(2, 3, 6\)"),
    "lengths-on-meta": (lambda: _gru_call(torch.ones(B, dtype=torch.long, device="meta")), RuntimeError,
                        "lengths is on meta"),
}


@pytest.mark.parametrize("case", CELL_BAD)
def test_cells_states_and_devices_bad_input(case):
    call, exc, match = CELL_BAD[case]
    with pytest.raises(exc, match=match):
        call()


def _att_args(**over):
    args = dict(query=torch.randn(B, 2, I), keys=torch.randn(B, 5, I))
    args.update(over)
    return args


ATTENTION_BAD = {
    "keys-device": (_att_args(keys=torch.randn(B, 5, I, device="meta")), RuntimeError,
                    "keys is on meta but query is on cpu"),
    "values-device": (_att_args(values=torch.randn(B, 5, 3, device="meta")), RuntimeError,
                      "values is on meta but query is on cpu"),
    "mask-device": (_att_args(mask=torch.ones(B, 5, dtype=torch.bool, device="meta")), RuntimeError,
                    "mask is on meta but keys are on cpu"),
    "v-device": (_att_args(score="additive", v=torch.randn(I, device="meta")), RuntimeError,
                 "v is on meta but query is on cpu"),
    "weight-dtype": (_att_args(score="general", weight=torch.randn(I, I, dtype=torch.float64)), TypeError,
                     "weight has dtype torch.float64 but query has dtype torch.float32"),
    "complex-keys": (_att_args(keys=torch.randn(B, 5, I, dtype=torch.complex64)), TypeError,
                     "keys must be a floating-point tensor"),
    "lengths-on-meta": (_att_args(lengths=torch.ones(B, dtype=torch.long, device="meta")), RuntimeError,
                        "lengths is on meta"),
}


@pytest.mark.parametrize("case", ATTENTION_BAD)
def test_attention_devices_and_dtypes_bad_input(case):
    args, exc, match = ATTENTION_BAD[case]
    with pytest.raises(exc, match=match):
        F.attention(args.pop("query"), args.pop("keys"), args.pop("values", None), **args)


@pytest.mark.parametrize("layer,field,shape,match", [
    (0, 1, (24, 5), r"weights\[layer 0\]\.w_hh must have shape \(24, 6\)"),
    (0, 2, (23,), r"weights\[layer 0\]\.b_ih must have shape \(24,\)"),
    (1, 0, (24, 4), r"weights\[layer 1\]\.w_ih must have shape \(24, 6\)"),
])
def test_functional_weights_that_do_not_fit_name_the_tensor(layer, field, shape, match):
    # torch.nn builds consistent weights; hand-made ones for the functional API may not.
    weights = list(torch.nn.LSTM(4, 6, num_layers=2)._flat_weights)
    weights[4 * layer + field] = torch.randn(shape)
    with pytest.raises(ValueError, match=match):
        fused_rnn.functional.lstm(torch.randn(3, 2, 4), None, weights, num_layers=2)
