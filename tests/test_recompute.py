"""Recomputing the gate activations in backward (fused_rnn.use_recompute): the setting
itself, then, on the cpu backend (the one that recomputes), that a training forward really
keeps only its states and that the backward gives torch.nn's gradients and the keep-all
path's. The whole parity grid also runs with FUSED_RNN_RECOMPUTE=always
(tests/test_cpu_backend.py)."""

import os
import subprocess
import sys

import pytest
import torch

import fused_rnn
from fused_rnn import _native, recompute
from fused_rnn.recompute import RING_ROWS, recompute_enabled, set_recompute, use_recompute
from fused_rnn.testing import assert_close, child_env, randn, random_lengths, tolerance

needs_cpu = pytest.mark.skipif(
    _native.cpu_available() is not None,
    reason=f"the cpu backend is not built here: {_native.cpu_available()}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, B, I, H = 9, 4, 5, 6
MODULES = {"lstm": (fused_rnn.LSTM, torch.nn.LSTM), "gru": (fused_rnn.GRU, torch.nn.GRU)}


@pytest.fixture(autouse=True)
def _default_setting(monkeypatch):
    """Recompute wherever it is on (FUSED_RNN_RECOMPUTE=always): these sizes are too small to
    gain from it, which only the size test below leaves as it is."""
    monkeypatch.setattr(recompute, "_ALWAYS", True)
    set_recompute(None)
    yield
    set_recompute(None)


# ---------------------------------------------------------------- the setting

def test_context_overrides_the_global_setting_and_restores_it():
    assert recompute_enabled() is (os.environ.get("FUSED_RNN_RECOMPUTE") in ("1", "always"))
    set_recompute(True)
    assert recompute_enabled()
    with use_recompute(False):
        assert not recompute_enabled()
        with use_recompute():
            assert recompute_enabled()
        assert not recompute_enabled()
    assert recompute_enabled()
    set_recompute(False)
    assert not recompute_enabled()


@pytest.mark.parametrize("call", [lambda: set_recompute("yes"), lambda: use_recompute(1).__enter__()])
def test_a_setting_that_is_not_a_bool_is_refused(call):
    with pytest.raises(TypeError, match="recompute must be a bool"):
        call()


@pytest.mark.parametrize("value, enabled", [("1", "True"), ("always", "True"), ("0", "False"),
                                             ("", "False")])
def test_the_environment_sets_the_default(value, enabled):
    code = "import fused_rnn; print(fused_rnn.recompute_enabled())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(child_env(), FUSED_RNN_RECOMPUTE=value))
    assert r.returncode == 0 and r.stdout.strip() == enabled, r.stderr


def test_an_environment_value_other_than_0_or_1_is_refused_at_import():
    r = subprocess.run([sys.executable, "-c", "import fused_rnn"], capture_output=True, text=True,
                       cwd=ROOT, env=dict(child_env(), FUSED_RNN_RECOMPUTE="yes"))
    assert r.returncode != 0 and "FUSED_RNN_RECOMPUTE must be 0, 1 or always, got 'yes'" in r.stderr


# ---------------------------------------------------------------- the cpu backend

def _pair(cell, dtype, **kw):
    fused_cls, torch_cls = MODULES[cell]
    ref = torch_cls(I, H, **kw).to(dtype)
    fused = fused_cls(I, H, **kw).to(dtype)
    fused.load_state_dict(ref.state_dict())
    return fused, ref


def _run(module, x, lengths, saved_shapes=None):
    """Output (padded) of module on x, or on x packed by lengths; records the shapes that
    autograd saves into saved_shapes."""
    inp = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(
        x, lengths, enforce_sorted=False)
    hooks = torch.autograd.graph.saved_tensors_hooks(
        lambda t: (saved_shapes.append(tuple(t.shape)) if saved_shapes is not None else None) or t,
        lambda t: t)
    with fused_rnn.use_backend("cpu"), hooks:
        out = module(inp)[0]
    return out if lengths is None else torch.nn.utils.rnn.pad_packed_sequence(out)[0]


def _grads(out, x, module, dy):
    return torch.autograd.grad(out, [x, *module.parameters()], dy)


@needs_cpu
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", list(MODULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recomputed_backward_matches_torch_nn_and_keeps_no_activations(dtype, cell, bidirectional,
                                                                       with_lengths):
    fused, ref = _pair(cell, dtype, num_layers=2, bidirectional=bidirectional)
    x = randn(T, B, I, dtype=dtype, requires_grad=True)
    lengths = random_lengths(B, T) if with_lengths else None
    want = _run(ref, x, lengths)
    dy = randn(*want.shape, dtype=dtype)
    want_grads = _grads(want, x, ref, dy)
    kept_shapes, states_shapes = [], []
    kept = _run(fused, x, lengths, kept_shapes)
    kept_grads = _grads(kept, x, fused, dy)
    with use_recompute():
        got = _run(fused, x, lengths, states_shapes)
    got_grads = _grads(got, x, fused, dy)  # outside the context: the forward's choice holds

    acts = (T, B, 4 * H)
    layers = 2 * (2 if bidirectional else 1)
    assert kept_shapes.count(acts) == layers
    assert acts not in states_shapes and states_shapes.count((0, B, 4 * H)) == layers
    rtol, atol = tolerance("cpu", dtype)
    assert_close(got, want, rtol=rtol, atol=atol, name="output")
    names = ["x"] + [n for n, _ in fused.named_parameters()]
    for g, w, k, n in zip(got_grads, want_grads, kept_grads, names):
        assert_close(g, w, rtol=rtol, atol=atol, name=f"d{n} vs torch.nn")
        # The forward's own step kernel recomputes them: the keep-all path's numbers.
        assert_close(g, k, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=1e-12 if
                     dtype == torch.float64 else 1e-6, name=f"d{n} vs kept activations")


@needs_cpu
@pytest.mark.parametrize("extra_steps, recomputed", [(0, False), (1, True)])
def test_only_layers_whose_activations_outweigh_the_recompute_buffers_recompute(
        monkeypatch, extra_steps, recomputed):
    """The recompute's own buffers (panels of [W_ih | W_hh], a ring of RING_ROWS rows) hold
    I + P + RING_ROWS rows of gates: a layer of no more rows keeps its activations."""
    monkeypatch.setattr(recompute, "_ALWAYS", False)
    batch, steps = 1, I + H + RING_ROWS + extra_steps
    fused, _ = _pair("lstm", torch.float32)
    x = randn(steps, batch, I, requires_grad=True)
    shapes = []
    with use_recompute():
        _run(fused, x, None, shapes)
    assert ((0, batch, 4 * H) in shapes) is recomputed
    assert ((steps, batch, 4 * H) in shapes) is not recomputed


@needs_cpu
@pytest.mark.parametrize("cell", list(MODULES))
def test_gradcheck_with_recomputed_activations(cell):
    fused, _ = _pair(cell, torch.float64, bidirectional=True)
    x = randn(5, 3, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    names = [n for n, _ in fused.named_parameters()]

    def f(x, *params):
        with use_recompute():
            return _run_functional(fused, dict(zip(names, params)), x, lengths)

    assert torch.autograd.gradcheck(f, (x, *fused.parameters()))


def _run_functional(module, params, x, lengths):
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with fused_rnn.use_backend("cpu"):
        out = torch.func.functional_call(module, params, (packed,))[0]
    return torch.nn.utils.rnn.pad_packed_sequence(out)[0]


@needs_cpu
@pytest.mark.parametrize("cell", list(MODULES))
def test_a_retained_graph_gives_the_same_gradients_twice(cell):
    fused, _ = _pair(cell, torch.float32)
    x = randn(T, B, I, requires_grad=True)
    with use_recompute():
        out = _run(fused, x, None)
    dy = randn(*out.shape)
    first = torch.autograd.grad(out, [x, *fused.parameters()], dy, retain_graph=True)
    second = torch.autograd.grad(out, [x, *fused.parameters()], dy)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@needs_cpu
@pytest.mark.parametrize("case", ["bfloat16", "float16", "proj_size"])
def test_where_it_cannot_recompute_the_forward_keeps_everything(case):
    """bf16/fp16 (activations recomputed from rounded states would differ) and an LSTM
    projection keep their activations under recompute: the same numbers as without it."""
    dtype = getattr(torch, case, torch.float32)
    kw = dict(proj_size=3) if case == "proj_size" else {}
    fused, _ = _pair("lstm", dtype, **kw)
    x = randn(T, B, I, dtype=dtype, requires_grad=True)
    runs = []
    for on in (False, True):
        shapes = []
        with use_recompute(on):
            out = _run(fused, x, None, shapes)
        grads = _grads(out, x, fused, torch.ones_like(out))
        runs.append((out, grads, shapes))
    (out0, g0, s0), (out1, g1, s1) = runs
    assert (T, B, 4 * H) in s1 and s0 == s1
    assert torch.equal(out0, out1)
    for a, b in zip(g0, g1):
        assert torch.equal(a, b)


@needs_cpu
def test_compiled_module_recomputes_too():
    fused, ref = _pair("gru", torch.float32)
    x = randn(T, B, I, requires_grad=True)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    shapes = []
    with use_recompute():
        got = _run(compiled, x, None, shapes)
    want = _run(ref, x, None)
    dy = randn(*want.shape)
    rtol, atol = tolerance("cpu", torch.float32)
    assert (0, B, 4 * H) in shapes and (T, B, 4 * H) not in shapes
    for g, w in zip(_grads(got, x, fused, dy), _grads(want, x, ref, dy)):
        assert_close(g, w, rtol=rtol, atol=atol, name="gradient")
