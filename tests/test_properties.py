"""Property-based parity: random cell type, sizes (1 and non-powers of two included), layers,
directions, batch_first, proj_size, lengths (all equal, one of length 1, unsorted) and
dtype; every available backend agrees with the reference backend on outputs, final states
and every gradient. Bounded examples keep CI quick; a failure found here becomes a plain
regression test below."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn import testing
from fused_rnn.testing import assert_close, tolerance

# Triton's interpreter (CPU) costs ~0.1 s per layer call: fewer examples there.
INTERPRETED = {"triton"} if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else set()
FUSED = [b for b in testing.testable_backends() if b != "reference" and b not in INTERPRETED]
SLOW = [b for b in testing.testable_backends() if b in INTERPRETED]
CLASSES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "rnn_tanh": fused_rnn.RNN,
           "rnn_relu": fused_rnn.RNN}


@st.composite
def configs(draw):
    mode = draw(st.sampled_from(sorted(CLASSES)))
    c = dict(
        mode=mode,
        T=draw(st.integers(1, 7)), B=draw(st.integers(1, 9)),
        I=draw(st.integers(1, 19)), H=draw(st.integers(1, 21)),
        layers=draw(st.integers(1, 2)), bidir=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        proj=draw(st.integers(0, 5)) if mode == "lstm" else 0,
        lengths=draw(st.sampled_from(["none", "all_equal", "one_is_1", "random"])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2 ** 16)),
    )
    if c["proj"] >= c["H"]:
        c["proj"] = 0  # torch requires proj_size < hidden_size
    return c


def _lengths(kind, B, T, gen):
    if kind == "all_equal":
        return torch.full((B,), T)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    if kind == "one_is_1":
        lengths[0], lengths[-1] = 1, T
    else:
        lengths[torch.randint(0, B, (1,), generator=gen)] = T
    return lengths  # unsorted


def run(backend, c):
    """Outputs, final states and gradients (input, states, parameters) on one backend."""
    gen = torch.Generator().manual_seed(c["seed"])
    kw = dict(num_layers=c["layers"], bidirectional=c["bidir"], batch_first=c["batch_first"])
    if c["mode"].startswith("rnn"):
        kw["nonlinearity"] = c["mode"][4:]
    if c["proj"]:
        kw["proj_size"] = c["proj"]
    torch.manual_seed(c["seed"])
    m = CLASSES[c["mode"]](c["I"], c["H"], **kw).to(c["dtype"])
    shape = (c["B"], c["T"], c["I"]) if c["batch_first"] else (c["T"], c["B"], c["I"])
    x = torch.randn(*shape, generator=gen, dtype=torch.float64).to(c["dtype"]).requires_grad_()
    inp = x
    if c["lengths"] != "none":
        inp = pack_padded_sequence(x, _lengths(c["lengths"], c["B"], c["T"], gen),
                                   batch_first=c["batch_first"], enforce_sorted=False)
    with fused_rnn.use_backend(backend):
        out, hidden = m(inp)
    out = out.data if isinstance(out, PackedSequence) else out
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    ups = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in [out] + states]
    loss = sum((t * u).sum() for t, u in zip([out] + states, ups))
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
    names = ["out"] + [f"state{i}" for i in range(len(states))] + ["dx"] + [
        f"d{n}" for n, _ in m.named_parameters()]
    return names, [out] + states + list(grads)


@pytest.mark.skipif(not FUSED, reason="no fused backend is available here, only the reference")
@pytest.mark.parametrize("backend", FUSED)
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(c=configs())
def test_backend_agrees_with_reference(backend, c):
    rtol, atol = tolerance(backend, c["dtype"])
    names, got = run(backend, c)
    _, want = run("reference", c)
    for n, a, e in zip(names, got, want):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


@pytest.mark.skipif(not SLOW, reason="no interpreted backend here")
@pytest.mark.parametrize("backend", SLOW)
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(c=configs())
def test_interpreted_backend_agrees_with_reference(backend, c):
    test_backend_agrees_with_reference.hypothesis.inner_test(backend, c)
