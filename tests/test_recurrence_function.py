"""The per-layer autograd Function: every backend's explicit backward against autograd
through the reference forward, and gradcheck in float64."""

import itertools

import pytest
import torch

from fused_rnn import backends
from fused_rnn.ops.recurrence import reference
from fused_rnn.ops.recurrence.cells import GATES, GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights
from fused_rnn.ops.recurrence.function import recurrence_layer
from fused_rnn.testing import assert_close, randn, tolerance

T, B, I, H = 6, 3, 5, 7

CASES = [
    pytest.param(mode, reverse, lengths, proj, bias,
                 id=f"{mode}-{'rev' if reverse else 'fwd'}-{'len' if lengths else 'full'}"
                    f"-proj{proj}-{'bias' if bias else 'nobias'}")
    for mode, reverse, lengths, proj, bias in itertools.product(
        [LSTM, GRU, RNN_TANH, RNN_RELU], (False, True), (False, True), (0, 4), (True, False))
    if not (proj and mode != LSTM)
]


def make_args(mode, lengths, proj, bias, dtype=torch.float64):
    """Leaves requiring grad: x, h0, c0 (LSTM) and the layer's weights; lengths or None."""
    G, P = GATES[mode], proj or H
    x = randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = randn(B, P, dtype=dtype, requires_grad=True)
    c0 = randn(B, H, dtype=dtype, requires_grad=True) if mode == LSTM else None
    mk = lambda *s: randn(*s, dtype=dtype, requires_grad=True, scale=0.5)  # noqa: E731
    w = LayerWeights(mk(G * H, I), mk(G * H, P), mk(G * H) if bias else None,
                     mk(G * H) if bias else None, mk(P, H) if proj else None)
    lens = torch.tensor([T, 2, 5]) if lengths else None
    return x, h0, c0, w, lens


def _leaves(x, h0, c0, w):
    return [t for t in (x, h0, c0, *w) if t is not None]


@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", CASES)
def test_explicit_backward_matches_autograd_of_reference(backend, mode, reverse, lengths, proj, bias):
    check_against_reference(backend, mode, reverse, *make_args(mode, lengths, proj, bias))


@pytest.mark.parametrize("mode", [LSTM, GRU, RNN_TANH])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_nearly_full_lengths_match_reference_too(backend, mode, reverse):
    """make_args' lengths leave 28% of the steps padded; 1 of 18 here, where the cpu backend's
    sums over steps keep the finished rows rather than leave them out (recurrence.cpp's
    sum_rows): both ways must give the reference's numbers."""
    x, h0, c0, w, _ = make_args(mode, False, 0, True)
    check_against_reference(backend, mode, reverse, x, h0, c0, w, torch.tensor([T, T - 1, T]))


def check_against_reference(backend, mode, reverse, x, h0, c0, w, lens, tol=None):
    """Outputs and every gradient of one layer against autograd through the reference
    forward, within the backend's tolerance for x's dtype or ``tol`` = (rtol, atol)."""
    rtol, atol = tol or tolerance(backend, x.dtype)
    ops = backends.get_backend(backend).ops("recurrence")
    y, h_n, c_n = recurrence_layer(ops, mode, reverse, x, h0, c0, w, lens)
    ry, rh, rc, _ = reference._fwd(mode, reverse, x, h0, c0, w, lens, need_saved=False)
    outs, routs = [y, h_n] + ([c_n] if c_n is not None else []), [ry, rh] + ([rc] if rc is not None else [])
    for n, a, e in zip(("y", "h_n", "c_n"), outs, routs):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
    ups = [torch.randn_like(t) for t in outs]
    leaves = _leaves(x, h0, c0, w)
    got = torch.autograd.grad(sum((o * u).sum() for o, u in zip(outs, ups)), leaves)
    want = torch.autograd.grad(sum((o * u).sum() for o, u in zip(routs, ups)), leaves)
    names = ["dx", "dh0"] + (["dc0"] if c0 is not None else []) + [
        f"d{f}" for f, t in zip(LayerWeights._fields, w) if t is not None]
    for n, a, e in zip(names, got, want):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", CASES)
def test_one_step_matches_reference(backend, mode, reverse, lengths, proj, bias):
    """T = 1, a cell's call: the cpu backend then runs both GEMMs on the weights as they lie
    and its tiles for the gate math only; a row of length 0 keeps its state. With and
    without gradients (the forward without saving takes its own buffers)."""
    x, h0, c0, w, _ = make_args(mode, False, proj, bias)
    x = x[:1].detach().requires_grad_(True)
    lens = torch.tensor([1, 0, 1]) if lengths else None
    check_against_reference(backend, mode, reverse, x, h0, c0, w, lens)
    ops = backends.get_backend(backend).ops("recurrence")
    rtol, atol = tolerance(backend, x.dtype)
    with torch.no_grad():
        got = recurrence_layer(ops, mode, reverse, x, h0, c0, w, lens)
        want = reference._fwd(mode, reverse, x, h0, c0, w, lens, need_saved=False)[:3]
    for n, a, e in zip(("y", "h_n", "c_n"), got, want):
        if e is not None:
            assert_close(a, e, rtol=rtol, atol=atol, name=n)


def test_gradient_of_only_the_final_state(backend):
    """Unused outputs reach backward as None (grads are not materialised)."""
    x, h0, c0, w, lens = make_args(LSTM, True, 0, True)
    ops = backends.get_backend(backend).ops("recurrence")
    _, h_n, _ = recurrence_layer(ops, LSTM, True, x, h0, c0, w, lens)
    _, rh, _, _ = reference._fwd(LSTM, True, x, h0, c0, w, lens, need_saved=False)
    leaves = _leaves(x, h0, c0, w)
    for a, e in zip(torch.autograd.grad(h_n.sum(), leaves), torch.autograd.grad(rh.sum(), leaves)):
        assert_close(a, e, rtol=1e-7, atol=1e-9, name="grad")


@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", [
    c for c in CASES if c.values[4]])  # bias on: gradcheck covers the bias gradients too
def test_gradcheck_float64(backend, mode, reverse, lengths, proj, bias):
    x, h0, c0, w, lens = make_args(mode, lengths, proj, bias)
    ops = backends.get_backend(backend).ops("recurrence")
    n_c = 1 if c0 is not None else 0

    def f(x, h0, *rest):
        c = rest[0] if n_c else None
        ws = list(rest[n_c:])
        full = LayerWeights(*ws, *([None] * (5 - len(ws))))
        return tuple(o for o in recurrence_layer(ops, mode, reverse, x, h0, c, full, lens) if o is not None)

    assert torch.autograd.gradcheck(f, tuple(_leaves(x, h0, c0, w)), eps=1e-6, atol=1e-7)


def test_inference_saves_nothing_for_backward(backend):
    """Under no_grad the forward keeps no activations: no graph, no saved tensors."""
    x, h0, c0, w, lens = make_args(LSTM, True, 0, True)
    ops = backends.get_backend(backend).ops("recurrence")
    with torch.no_grad():
        y, h_n, c_n = recurrence_layer(ops, LSTM, False, x, h0, c0, w, lens)
    assert y.grad_fn is None and h_n.grad_fn is None
    ry, rh, rc, _ = reference._fwd(LSTM, False, x, h0, c0, w, lens, need_saved=False)
    assert_close(y, ry, rtol=1e-7, atol=1e-9, name="y")


@pytest.mark.parametrize("mode", [LSTM, GRU, RNN_TANH])
def test_second_backward_through_a_retained_graph_gives_the_same_gradients(backend, mode):
    """A backend may spend its saved activations in backward; retain_graph must still work."""
    x, h0, c0, w, lens = make_args(mode, True, 0, True)
    ops = backends.get_backend(backend).ops("recurrence")
    y, h_n, _ = recurrence_layer(ops, mode, True, x, h0, c0, w, lens)
    loss = (y * torch.randn_like(y)).sum() + (h_n * torch.randn_like(h_n)).sum()
    leaves = _leaves(x, h0, c0, w)
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for a, e in zip(second, first):
        assert torch.equal(a, e)


def test_strided_lengths_read_as_their_values(backend):
    """lengths as a strided view (every other entry of a longer tensor) give what their
    contiguous copy gives (a binding read a strided one densely before; found in review)."""
    x, h0, c0, w, _ = make_args(GRU, False, 0, True)
    ops = backends.get_backend(backend).ops("recurrence")
    strided = torch.tensor([T, 0, 2, 0, 5, 0])[::2]
    assert not strided.is_contiguous()
    got = recurrence_layer(ops, GRU, True, x, h0, None, w, strided)
    want = recurrence_layer(ops, GRU, True, x, h0, None, w, strided.contiguous())
    for n, a, e in zip(("y", "h_n"), got[:2], want[:2]):
        assert_close(a, e, rtol=0, atol=0, name=n)
