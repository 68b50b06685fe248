"""The cpu backend's cells run one C++ op with its autograd in C++ (``torch.ops.fused_rnn.
cell_step``): what the Python autograd Function guaranteed must hold there too (parity with
torch.nn is tests/test_cells.py, on every backend)."""

import pytest
import torch

import fused_rnn
from fused_rnn import _native
from fused_rnn.testing import assert_close, randn

pytestmark = pytest.mark.skipif(_native.cpu_available() is not None,
                                reason=f"the cpu backend is not built here: {_native.cpu_available()}")

B, I, H = 3, 5, 7
CELLS = {
    "lstm": (torch.nn.LSTMCell, fused_rnn.LSTMCell),
    "gru": (torch.nn.GRUCell, fused_rnn.GRUCell),
    "rnn": (torch.nn.RNNCell, fused_rnn.RNNCell),
}


def _pair(cell, dtype=torch.float64, bias=True):
    torch_cls, fused_cls = CELLS[cell]
    ref = torch_cls(I, H, bias=bias).to(dtype)
    fused = fused_cls(I, H, bias=bias).to(dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _hx(cell, dtype=torch.float64):
    n = 2 if cell == "lstm" else 1
    states = [randn(B, H, dtype=dtype, requires_grad=True) for _ in range(n)]
    return states, (tuple(states) if cell == "lstm" else states[0])


def _outs(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_cells_take_the_cpp_step(cell, dtype):
    """fp32/fp64 cells on the cpu backend record the C++ node (not the Python Function)."""
    _, fused = _pair(cell, dtype)
    with fused_rnn.use_backend("cpu"):
        out = _outs(fused(randn(B, I, dtype=dtype, requires_grad=True)))
    assert "CellStep" in out[0].grad_fn.name(), out[0].grad_fn.name()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_float64(cell, bias):
    _, fused = _pair(cell, bias=bias)
    x = randn(B, I, dtype=torch.float64, requires_grad=True)
    states, _ = _hx(cell)
    params = list(fused.parameters())

    def f(x, *rest):
        s = rest[:len(states)]
        weights = dict(zip([n for n, _ in fused.named_parameters()], rest[len(states):]))
        return _outs(torch.func.functional_call(fused, weights,
                                                (x, tuple(s) if cell == "lstm" else s[0])))

    with fused_rnn.use_backend("cpu"):
        assert torch.autograd.gradcheck(f, (x, *states, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", CELLS)
def test_second_backward_through_a_retained_graph_gives_the_same_gradients(cell):
    """The step's backward writes over its saved activations; a retained graph's second
    backward must recompute them, not read gate gradients as activations."""
    _, fused = _pair(cell)
    x = randn(B, I, dtype=torch.float64, requires_grad=True)
    states, hx = _hx(cell)
    with fused_rnn.use_backend("cpu"):
        outs = _outs(fused(x, hx))
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    leaves = [x, *states, *fused.parameters()]
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for a, e in zip(second, first):
        assert torch.equal(a, e)


@pytest.mark.parametrize("cell", CELLS)
def test_create_graph_gives_first_gradients_and_refuses_the_second(cell):
    """create_graph=True: the first gradients are torch.nn's; differentiating them raises
    (the backward is not differentiable), never a silently missing term."""
    ref, fused = _pair(cell)
    x = randn(B, I, dtype=torch.float64, requires_grad=True)
    states, hx = _hx(cell)
    grads = {}
    with fused_rnn.use_backend("cpu"):
        for name, m in (("torch", ref), ("fused", fused)):
            loss = sum((o * o).sum() for o in _outs(m(x, hx)))
            grads[name] = torch.autograd.grad(loss, [x, *states], create_graph=True)
    for a, e in zip(grads["fused"], grads["torch"]):
        assert_close(a, e, rtol=1e-7, atol=1e-9, name="first gradient")
    assert grads["fused"][0].requires_grad
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grads["fused"][0].sum().backward()


def test_no_grad_step_records_nothing():
    _, fused = _pair("lstm")
    x = randn(B, I, dtype=torch.float64, requires_grad=True)
    with fused_rnn.use_backend("cpu"), torch.no_grad():
        h, c = fused(x)
    assert h.grad_fn is None and c.grad_fn is None and not h.requires_grad


MODULES = {"lstm": (torch.nn.LSTM, fused_rnn.LSTM), "gru": (torch.nn.GRU, fused_rnn.GRU),
           "rnn": (torch.nn.RNN, fused_rnn.RNN)}


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("layers,bidirectional,batch_first",
                         [(1, False, True), (2, True, False), (2, False, True)])
def test_one_step_modules_take_the_cpp_step_and_match_torch(cell, layers, bidirectional,
                                                            batch_first):
    """``nn.GRU`` called a step at a time (the seq2seq decoder of PyTorch's tutorial): one
    step per layer and direction through the C++ step, outputs and gradients torch.nn's."""
    torch_cls, fused_cls = MODULES[cell]
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    ref = torch_cls(I, H, **kw).double()
    fused = fused_cls(I, H, **kw).double()
    fused.load_state_dict(ref.state_dict())
    x = randn(*((B, 1) if batch_first else (1, B)), I, dtype=torch.float64, requires_grad=True)
    n = layers * (2 if bidirectional else 1)
    states = [randn(n, B, H, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if cell == "lstm" else 1)]
    hx = tuple(states) if cell == "lstm" else states[0]
    outs = {}
    with fused_rnn.use_backend("cpu"):
        for name, m in (("torch", ref), ("fused", fused)):
            y, st = m(x, hx)
            outs[name] = (y, *(st if cell == "lstm" else (st,)))
    assert any("CellStep" in f.name() for f in _graph_nodes(outs["fused"][0].grad_fn))
    ups = [torch.randn_like(t) for t in outs["torch"]]
    leaves = [x, *states, *ref.parameters()], [x, *states, *fused.parameters()]
    for (name, o), lv in zip(outs.items(), leaves):
        outs[name] = (o, torch.autograd.grad(sum((a * u).sum() for a, u in zip(o, ups)), lv))
    for a, e in zip([*outs["fused"][0], *outs["fused"][1]], [*outs["torch"][0], *outs["torch"][1]]):
        assert_close(a, e, rtol=1e-7, atol=1e-9, name=cell)


def _graph_nodes(fn, seen=None):
    seen = set() if seen is None else seen
    if fn is None or fn in seen:
        return seen
    seen.add(fn)
    for nxt, _ in fn.next_functions:
        _graph_nodes(nxt, seen)
    return seen


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 64, 65])
@pytest.mark.parametrize("sizes", [(37, 19), (200, 300)], ids=["tails", "split-over-threads"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_few_rows_take_the_small_batch_kernels_and_match_torch(cell, batch, sizes, dtype):
    """Up to 64 rows (a decoder's batch), the step's products with W_ih, W_hh and their
    backward's with the gate gradients run on the weights as they lie (kernels.h's
    SmallGemm, in groups of 4 rows: 1-3 and 5 leave partial groups): sizes off the vector
    width (37, 19), and weights large enough to be split over threads (200, 300); 65 rows
    take MKL, for comparison."""
    n_in, n_hidden = sizes
    torch_cls, fused_cls = CELLS[cell]
    ref = torch_cls(n_in, n_hidden).to(dtype)
    fused = fused_cls(n_in, n_hidden).to(dtype)
    fused.load_state_dict(ref.state_dict())
    x = randn(batch, n_in, dtype=dtype, requires_grad=True)
    states = [randn(batch, n_hidden, dtype=dtype, requires_grad=True)
              for _ in range(2 if cell == "lstm" else 1)]
    hx = tuple(states) if cell == "lstm" else states[0]
    leaves = {"torch": [x, *states, *ref.parameters()], "fused": [x, *states, *fused.parameters()]}
    outs, grads = {}, {}
    with fused_rnn.use_backend("cpu"):
        for name, m in (("torch", ref), ("fused", fused)):
            outs[name] = _outs(m(x, hx))
            weights = [torch.randn_like(o) for o in outs[name]] if name == "torch" else weights
            loss = sum((o * w).sum() for o, w in zip(outs[name], weights))
            grads[name] = torch.autograd.grad(loss, leaves[name])
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-10, 1e-12)
    for a, e in zip(outs["fused"], outs["torch"]):
        assert_close(a, e, rtol=rtol, atol=atol, name="output")
    names = ["x"] + [f"state{i}" for i in range(len(states))] + [n for n, _ in fused.named_parameters()]
    for a, e, n in zip(grads["fused"], grads["torch"], names):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"d{n}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("steps,batch", [(70, 1), (70, 3)])
def test_short_sequences_with_large_weights_take_the_small_batch_kernels(cell, steps, batch):
    """Fewer than 256 rows over all steps (T*B = 70, 210), more than 64, with W_ih of 1 MiB
    or more: the input projection and the backward's dx take the small-batch kernels too."""
    torch_cls, fused_cls = MODULES[cell]
    size = 256 if cell == "lstm" else 300  # W_ih: 1 MiB, 1.03 MiB
    ref = torch_cls(size, size)
    fused = fused_cls(size, size)
    fused.load_state_dict(ref.state_dict())
    x = randn(steps, batch, size, requires_grad=True)
    with fused_rnn.use_backend("cpu"):
        got, want = fused(x)[0], ref(x)[0]
        dy = torch.randn_like(want)
        got_grads = torch.autograd.grad(got, [x, *fused.parameters()], dy)
        want_grads = torch.autograd.grad(want, [x, *ref.parameters()], dy)
    assert_close(got, want, rtol=1e-5, atol=1e-5, name="output")
    for a, e, n in zip(got_grads, want_grads, ["x"] + [n for n, _ in fused.named_parameters()]):
        assert_close(a, e, rtol=1e-4, atol=1e-4, name=f"d{n}")
