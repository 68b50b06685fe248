"""Numerics at the edges on every backend: huge inputs stay finite where the reference does,
NaN propagates exactly as in the reference (never masked, never spread to other rows),
runs are bit-for-bit repeatable, and strided or offset views give the contiguous answer."""

import pytest
import torch

import fused_rnn
from fused_rnn.testing import assert_close, tolerance

MODES = {"lstm": (fused_rnn.LSTM, {}), "gru": (fused_rnn.GRU, {}),
         "rnn_tanh": (fused_rnn.RNN, {"nonlinearity": "tanh"}),
         "rnn_relu": (fused_rnn.RNN, {"nonlinearity": "relu"})}
T, B, I, H = 6, 4, 5, 7


def _module(mode, **kw):
    cls, extra = MODES[mode]
    return cls(I, H, **extra, **kw).double()


def _outputs_and_grads(m, x, backend):
    x = x.detach().requires_grad_()
    with fused_rnn.use_backend(backend):
        out, hidden = m(x)
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    loss = sum((t * (k + 1)).sum() for k, t in enumerate([out] + states))
    return [out] + states + list(torch.autograd.grad(loss, [x] + list(m.parameters())))


@pytest.mark.parametrize("mode", MODES)
def test_huge_inputs_stay_finite(backend, mode):
    m = _module(mode, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64) * 1e4
    with torch.no_grad(), fused_rnn.use_backend(backend):
        out, _ = m(x)
    with torch.no_grad(), fused_rnn.use_backend("reference"):
        ref, _ = m(x)
    assert torch.isfinite(ref).all() == torch.isfinite(out).all()
    if mode != "rnn_relu":  # relu grows without bound; the others saturate
        assert torch.isfinite(out).all()
    rtol, atol = tolerance(backend, torch.float64)
    assert_close(out, ref, rtol=rtol, atol=atol, name="output")


@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_as_in_the_reference(backend, mode):
    m = _module(mode)
    x = torch.randn(T, B, I, dtype=torch.float64)
    x[2, 1, 3] = float("nan")
    with torch.no_grad(), fused_rnn.use_backend(backend):
        out, _ = m(x)
    with torch.no_grad(), fused_rnn.use_backend("reference"):
        ref, _ = m(x)
    assert torch.equal(out.isnan(), ref.isnan())
    assert out[2:, 1].isnan().all() and not out[:2].isnan().any()
    assert not out[:, [0, 2, 3]].isnan().any(), "NaN leaked into other batch rows"


@pytest.mark.parametrize("mode", MODES)
def test_two_runs_are_bit_identical(backend, mode):
    m = _module(mode, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    first, second = (_outputs_and_grads(m, x, backend) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("view", ["transposed", "offset", "strided"])
def test_non_contiguous_and_offset_views_give_the_same_answer(backend, view):
    m = _module("lstm")
    x = torch.randn(T, B, I, dtype=torch.float64)
    if view == "transposed":
        v = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch-major memory
    elif view == "offset":
        v = torch.cat([torch.randn(1, B, I, dtype=torch.float64), x])[1:]  # storage offset
    else:
        v = torch.stack([x, torch.randn_like(x)], -1)[..., 0]  # stride 2 in the last dim
    assert not v.is_contiguous() or v.storage_offset() > 0
    rtol, atol = tolerance(backend, torch.float64)  # a strided GEMM may sum in another order
    for a, b in zip(_outputs_and_grads(m, v, backend), _outputs_and_grads(m, x, backend)):
        assert_close(a, b, rtol=rtol, atol=atol, name=view)
