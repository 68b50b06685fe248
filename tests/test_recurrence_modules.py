"""Parity of fused_rnn.LSTM/GRU/RNN with torch.nn on every backend: outputs, final states
and the gradients of input, initial state and every parameter, over the grid of cell
type x layers x directions x batch_first x proj_size x input form x dtype."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn.testing import assert_close, randn, random_lengths, tolerance

T, B, I, H, P = 5, 3, 4, 6, 3
MODES = {  # name: (torch class, fused class, constructor kwargs)
    "lstm": (torch.nn.LSTM, fused_rnn.LSTM, {}),
    "gru": (torch.nn.GRU, fused_rnn.GRU, {}),
    "rnn_tanh": (torch.nn.RNN, fused_rnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, fused_rnn.RNN, {"nonlinearity": "relu"}),
}
FORMS = ["padded", "packed_sorted", "packed_unsorted", "unbatched"]
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def _grid():
    for mode, layers, bidir, bf, proj, form, dt in itertools.product(
            MODES, (1, 2), (False, True), (False, True), (0, P), FORMS, DTYPES):
        if proj and mode != "lstm":
            continue
        if form == "unbatched" and bf:
            continue  # batch_first does not apply to unbatched input
        yield pytest.param(mode, layers, bidir, bf, proj, form, dt,
                           id=f"{mode}-L{layers}-{'bi' if bidir else 'uni'}-"
                              f"{'bf' if bf else 'tf'}-proj{proj}-{form}-{dt}")


def make_pair(mode, dtype, **kw):
    """A torch.nn module and its fused twin holding the same weights."""
    torch_cls, fused_cls, extra = MODES[mode]
    ref = torch_cls(I, H, **extra, **kw).to(dtype)
    fused = fused_cls(I, H, **extra, **kw).to(dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def make_inputs(mode, form, layers, bidir, bf, proj, dtype):
    """(input for the module, tensors whose gradients are compared, hx)."""
    shape = (T, I) if form == "unbatched" else ((B, T, I) if bf else (T, B, I))
    x = randn(*shape, dtype=dtype, requires_grad=True)
    state_shape = (layers * (2 if bidir else 1),) + (() if form == "unbatched" else (B,))
    h0 = randn(*state_shape, proj or H, dtype=dtype, requires_grad=True)
    leaves = [x, h0]
    hx = h0
    if mode == "lstm":
        c0 = randn(*state_shape, H, dtype=dtype, requires_grad=True)
        leaves.append(c0)
        hx = (h0, c0)
    if form.startswith("packed"):
        lengths = random_lengths(B, T, sorted_desc=form == "packed_sorted")
        x = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=form == "packed_sorted")
    return x, leaves, hx


def run_and_grads(module, inp, hx, leaves, upstream):
    out, hidden = module(inp, hx)
    out_t = out.data if isinstance(out, PackedSequence) else out
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    tensors = (out_t,) + states
    if upstream is None:
        upstream = [torch.randn_like(t) for t in tensors]
    loss = sum((t * u).sum() for t, u in zip(tensors, upstream))
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, leaves + params, retain_graph=True)  # packing is shared
    return out, tensors, grads, upstream


@pytest.mark.parametrize("mode,layers,bidir,bf,proj,form,dt", list(_grid()))
def test_module_matches_torch(backend, mode, layers, bidir, bf, proj, form, dt):
    dtype = DTYPES[dt]
    rtol, atol = tolerance(backend, dtype)
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=bf)
    if proj:
        kw["proj_size"] = proj
    ref, fused = make_pair(mode, dtype, **kw)
    inp, leaves, hx = make_inputs(mode, form, layers, bidir, bf, proj, dtype)
    r_out, r_tensors, r_grads, upstream = run_and_grads(ref, inp, hx, leaves, None)
    f_out, f_tensors, f_grads, _ = run_and_grads(fused, inp, hx, leaves, upstream)
    if isinstance(r_out, PackedSequence):
        assert isinstance(f_out, PackedSequence)
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            a, b = getattr(f_out, field), getattr(r_out, field)
            assert (a is None and b is None) or torch.equal(a, b), field
    names = ["output", "h_n", "c_n"][:len(r_tensors)]
    for n, a, e in zip(names, f_tensors, r_tensors):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
    grad_names = ["d_input", "d_h0", "d_c0"][:len(leaves)] + [f"d_{n}" for n, _ in ref.named_parameters()]
    for n, a, e in zip(grad_names, f_grads, r_grads):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


@pytest.mark.parametrize("mode", list(MODES))
def test_no_hx_and_no_bias(backend, mode):
    ref, fused = make_pair(mode, torch.float64, num_layers=2, bias=False, bidirectional=True)
    x = randn(T, B, I, dtype=torch.float64)
    r_out, _ = ref(x)
    f_out, _ = fused(x)
    assert_close(f_out, r_out, rtol=1e-7, atol=1e-9, name="output")


@pytest.mark.parametrize("mode", list(MODES))
def test_dropout_between_layers_matches_torch_in_training(backend, mode):
    """Same seed, same dropout masks: torch applies dropout to each layer's output but
    the last, in training only; so must we."""
    ref, fused = make_pair(mode, torch.float64, num_layers=3, dropout=0.4)
    x = randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(7)
    r_train, _ = ref(x)
    torch.manual_seed(7)
    f_train, _ = fused(x)
    assert_close(f_train, r_train, rtol=1e-7, atol=1e-9, name="output (train)")
    ref.eval(), fused.eval()
    f_eval, _ = fused(x)
    assert_close(f_eval, ref(x)[0], rtol=1e-7, atol=1e-9, name="output (eval)")
    assert not torch.allclose(f_eval, f_train), "dropout had no effect in training"


@pytest.mark.parametrize("mode", list(MODES))
def test_class_repr_and_state_dict_round_trips(mode):
    torch_cls, fused_cls, extra = MODES[mode]
    kw = dict(num_layers=2, bidirectional=True, **extra)
    if mode == "lstm":
        kw["proj_size"] = 2
    t, f = torch_cls(I, H, **kw), fused_cls(I, H, **kw)
    # RNNBase, not torch_cls: torch.compile refuses to trace instances of torch's three.
    assert isinstance(f, torch.nn.RNNBase) and not isinstance(f, torch_cls)
    assert repr(f) == repr(t) and f.mode == t.mode
    assert list(f.state_dict()) == list(t.state_dict())
    f.load_state_dict(t.state_dict())
    t2 = torch_cls(I, H, **kw)
    t2.load_state_dict(f.state_dict())
    for k, v in t.state_dict().items():
        assert torch.equal(f.state_dict()[k], v) and torch.equal(t2.state_dict()[k], v), k


def test_lengths_make_finished_rows_keep_state_and_emit_zeros(backend):
    """Padded positions of packed input are zero after unpacking; h_n is the state at
    each row's last valid step (checked against running each row alone)."""
    from torch.nn.utils.rnn import pad_packed_sequence
    fused = fused_rnn.LSTM(I, H, bidirectional=True).double()
    x = randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([T, 2, 4])
    out, (h, c) = fused(pack_padded_sequence(x, lengths, enforce_sorted=False))
    padded, _ = pad_packed_sequence(out)
    for b, L in enumerate(lengths.tolist()):
        assert torch.all(padded[L:, b] == 0)
        alone, (hb, cb) = fused(x[:L, b:b + 1])
        assert_close(padded[:L, b:b + 1], alone, rtol=1e-7, atol=1e-9, name=f"row {b} output")
        assert_close(h[:, b:b + 1], hb, rtol=1e-7, atol=1e-9, name=f"row {b} h_n")


@pytest.mark.parametrize("mode", list(MODES))
def test_empty_batch_returns_empty_outputs_as_torch(backend, mode):
    ref, fused = make_pair(mode, torch.float32, num_layers=2, bidirectional=True)
    x = randn(T, 0, I)
    (r_out, r_h), (f_out, f_h) = ref(x), fused(x)
    assert f_out.shape == r_out.shape
    for a, e in zip(f_h if isinstance(f_h, tuple) else (f_h,), r_h if isinstance(r_h, tuple) else (r_h,)):
        assert a.shape == e.shape


def test_rnn_constructor_parses_like_torch_nn():
    # nonlinearity is RNN's 4th positional argument; bad values and proj_size raise.
    f, t = fused_rnn.RNN(I, H, 2, "relu", False), torch.nn.RNN(I, H, 2, "relu", False)
    assert (f.nonlinearity, f.mode, f.bias, repr(f)) == (t.nonlinearity, t.mode, t.bias, repr(t))
    for cls in (fused_rnn.RNN, fused_rnn.GRU):
        with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
            cls(I, H, proj_size=2)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fused_rnn.RNN(I, H, nonlinearity="gelu")


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_functional_call_uses_the_given_weights(cls):
    """torch.func.functional_call (MAML, ensembles, stateless training) swaps the
    parameters; the fused module must compute with the swapped ones, as torch.nn's does."""
    fused = getattr(fused_rnn, cls)(5, 6, num_layers=2).double()
    ref = getattr(torch.nn, cls)(5, 6, num_layers=2).double()
    swapped = {n: p * 1.5 for n, p in fused.named_parameters()}
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    out = torch.func.functional_call(fused, swapped, (x,))[0]
    torch.testing.assert_close(out, torch.func.functional_call(ref, swapped, (x,))[0])
    assert not torch.allclose(out, fused(x)[0])  # and the module's own weights afterwards
    torch.testing.assert_close(fused(x)[0], torch.func.functional_call(ref, dict(fused.named_parameters()), (x,))[0])
