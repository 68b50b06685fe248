"""Parity of fused_rnn.LSTMCell/GRUCell/RNNCell with torch.nn's cells, gradients included."""

import itertools

import pytest
import torch

import fused_rnn
from fused_rnn.testing import assert_close, randn, tolerance

B, I, H = 3, 5, 7
CELLS = {
    "lstm": (torch.nn.LSTMCell, fused_rnn.LSTMCell, {}),
    "gru": (torch.nn.GRUCell, fused_rnn.GRUCell, {}),
    "rnn_tanh": (torch.nn.RNNCell, fused_rnn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNNCell, fused_rnn.RNNCell, {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("cell,batched,with_hx,bias,dt", [
    pytest.param(c, b, h, bias, dt, id=f"{c}-{'batched' if b else 'unbatched'}-"
                                       f"{'hx' if h else 'nohx'}-{'bias' if bias else 'nobias'}-{dt}")
    for c, b, h, bias, dt in itertools.product(CELLS, (True, False), (True, False), (True, False),
                                               ("fp32", "fp64"))])
def test_cell_matches_torch(backend, cell, batched, with_hx, bias, dt):
    dtype = {"fp32": torch.float32, "fp64": torch.float64}[dt]
    rtol, atol = tolerance(backend, dtype)
    torch_cls, fused_cls, kw = CELLS[cell]
    ref = torch_cls(I, H, bias=bias, **kw).to(dtype)
    fused = fused_cls(I, H, bias=bias, **kw).to(dtype)
    fused.load_state_dict(ref.state_dict())
    assert isinstance(fused, torch_cls)
    lead = (B,) if batched else ()
    x = randn(*lead, I, dtype=dtype, requires_grad=True)
    leaves, hx = [x], None
    if with_hx:
        n = 2 if cell == "lstm" else 1
        states = [randn(*lead, H, dtype=dtype, requires_grad=True) for _ in range(n)]
        leaves += states
        hx = tuple(states) if cell == "lstm" else states[0]
    outs = {}
    for name, m in (("torch", ref), ("fused", fused)):
        out = m(x, hx)
        outs[name] = out if isinstance(out, tuple) else (out,)
    ups = [torch.randn_like(t) for t in outs["torch"]]
    for a, e in zip(outs["fused"], outs["torch"]):
        assert_close(a, e, rtol=rtol, atol=atol, name="state")
    grads = {}
    for name, m in (("torch", ref), ("fused", fused)):
        loss = sum((o * u).sum() for o, u in zip(outs[name], ups))
        grads[name] = torch.autograd.grad(loss, leaves + list(m.parameters()))
    names = ["d_input", "d_h", "d_c"][:len(leaves)] + [f"d_{n}" for n, _ in ref.named_parameters()]
    for n, a, e in zip(names, grads["fused"], grads["torch"]):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


def test_decoder_loop_of_cells_matches_torch(backend):
    """A step-by-step decoder loop, as seq2seq models run it."""
    ref = torch.nn.LSTMCell(I, H).double()
    fused = fused_rnn.LSTMCell(I, H).double()
    fused.load_state_dict(ref.state_dict())
    xs = randn(4, B, I, dtype=torch.float64)
    hr = hf = None
    for t in range(4):
        hr, hf = ref(xs[t], hr), fused(xs[t], hf)
        assert_close(hf[0], hr[0], rtol=1e-7, atol=1e-9, name=f"h at step {t}")
        assert_close(hf[1], hr[1], rtol=1e-7, atol=1e-9, name=f"c at step {t}")


@pytest.mark.parametrize("cell,which", [("lstm", 0), ("lstm", 1), ("gru", 0), ("rnn_tanh", 0)])
def test_inplace_change_of_an_output_is_differentiated_or_refused(backend, cell, which):
    """h' (or c') changed in place before backward: a backend that keeps it for its
    backward must not read the changed values (a silent wrong gradient, found in review:
    the cells returned views of their saved states). Either the change is differentiated
    as its out-of-place twin, or autograd refuses it."""
    torch_cls, fused_cls, kw = CELLS[cell]
    fused = fused_cls(I, H, **kw).double()
    x = randn(B, I, dtype=torch.float64, requires_grad=True)
    twin, outs = (o if isinstance(o, tuple) else (o,) for o in (fused(x), fused(x)))
    ups = [torch.randn_like(t) for t in outs]
    want = torch.autograd.grad(
        sum(((o * 2 if i == which else o) * u).sum() for i, (o, u) in enumerate(zip(twin, ups))),
        x)[0]
    try:
        outs[which].mul_(2)
        got = torch.autograd.grad(sum((o * u).sum() for o, u in zip(outs, ups)), x)[0]
    except RuntimeError as e:
        assert "inplace" in str(e) or "in-place" in str(e), e
        return
    assert_close(got, want, rtol=1e-7, atol=1e-9, name="d_input")
