"""torch.compile(fullgraph=True) of models built on fused_rnn: no graph break, the same
outputs and gradients as torch.nn / the eager modules; and the saved-tensor layouts that
the custom ops' fake kernels declare agree with what each backend's forward returns.

Most cases compile with ``aot_eager`` (Dynamo, the fake kernels, functionalization and the
joint graph, i.e. everything of ours that compilation touches, without generating C++);
one case per module family goes through Inductor.
"""

import pytest
import torch

import fused_rnn
from fused_rnn import backends
from fused_rnn.ops.recurrence.cells import GATES, LSTM, LayerWeights
from fused_rnn.ops.recurrence.saved_layout import SAVE_ALL, SAVE_STATES
from fused_rnn import testing
from fused_rnn.testing import assert_close, randn, tolerance

T, B, I, H, P = 5, 3, 4, 6, 3
# Interpreted triton under compile adds minutes and no path of ours: cpu and reference.
COMPILE_BACKENDS = [b for b in testing.testable_backends() if b in ("cpu", "reference")]
# Inductor adds minutes of C++ compilation and no path of ours beyond aot_eager's: it runs
# on one backend only.
INDUCTOR_BACKEND = COMPILE_BACKENDS[0]


def _skip_costly_inductor(compiler, backend_name, wanted: bool, what: str):
    if compiler == "inductor" and (backend_name != INDUCTOR_BACKEND or not wanted):
        pytest.skip(f"Inductor runs on {what} with the {INDUCTOR_BACKEND} backend; "
                    "the other cases add no op of ours to aot_eager's")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # The backend is chosen once per compilation (backends.select_name): start each test
    # from an empty cache so that no graph compiled for another backend is reused.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _layer_inputs(mode, proj, batch, dtype, with_lengths):
    G, P_ = GATES[mode], (proj or H)
    w = LayerWeights(randn(G * H, I, dtype=dtype), randn(G * H, P_, dtype=dtype),
                     randn(G * H, dtype=dtype), randn(G * H, dtype=dtype),
                     randn(P_, H, dtype=dtype) if proj else None)
    x, h0 = randn(T, batch, I, dtype=dtype), randn(batch, P_, dtype=dtype)
    c0 = randn(batch, H, dtype=dtype) if mode == LSTM else None
    lengths = torch.randint(1, T + 1, (batch,)) if with_lengths else None
    return x, h0, c0, w, lengths


@pytest.mark.parametrize("batch", [3, 0])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("mode,proj", [("LSTM", 0), ("LSTM", P), ("GRU", 0), ("RNN_TANH", 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("saves", [SAVE_ALL, SAVE_STATES])
def test_saved_like_matches_the_forward(backend, mode, proj, with_lengths, reverse, batch, dtype,
                                        saves):
    ops = backends.get_backend(backend).ops("recurrence")
    x, h0, c0, w, lengths = _layer_inputs(mode, proj, batch, dtype, with_lengths)
    saved = ops._fwd(mode, reverse, x, h0, c0, w, lengths, need_saved=saves)[3]
    like = ops.saved_like(mode, reverse, x, h0, c0, w, lengths, saves)
    assert [(tuple(t.shape), t.dtype) for t in like] == [(tuple(t.shape), t.dtype) for t in saved]


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("kind", ["dot", "additive"])
def test_attention_saved_like_matches_the_forward(backend, kind, need_weights):
    ops = backends.get_backend(backend).ops("attention")
    if not hasattr(ops, "_fwd"):
        pytest.skip(f"{backend}: attention runs through autograd, nothing is saved by hand")
    q, k, values = randn(2, 3, 4), randn(2, 5, 4), randn(2, 5, 6)
    v = randn(4) if kind == "additive" else None
    saved = ops._fwd(q, k, values, None, kind, v, 1.0, need_weights)[2]
    like = ops.saved_like(q, k, values, None, kind, v, 1.0, need_weights)
    assert [(tuple(t.shape), t.dtype) for t in like] == [(tuple(t.shape), t.dtype) for t in saved]


def _torch_twin(fused_module, torch_cls, **kw):
    twin = torch_cls(**kw)
    twin.load_state_dict(fused_module.state_dict())
    return twin


RECURRENT = {
    "lstm": (fused_rnn.LSTM, torch.nn.LSTM, dict(num_layers=2, bidirectional=True)),
    "lstm_proj": (fused_rnn.LSTM, torch.nn.LSTM, dict(proj_size=P, batch_first=True)),
    "gru": (fused_rnn.GRU, torch.nn.GRU, dict(num_layers=2)),
    "rnn": (fused_rnn.RNN, torch.nn.RNN, dict(nonlinearity="relu", bidirectional=True)),
}


def _grads(module, *inputs):
    return [t.grad for t in inputs] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", list(RECURRENT))
@pytest.mark.parametrize("backend_name", COMPILE_BACKENDS)
def test_compiled_recurrent_module_matches_torch_nn(backend_name, name, compiler):
    _skip_costly_inductor(compiler, backend_name, name in ("lstm", "gru"), "LSTM and GRU")
    fused_cls, torch_cls, kw = RECURRENT[name]
    kw = dict(input_size=I, hidden_size=H, **kw)
    fused = fused_cls(**kw)
    ref = _torch_twin(fused, torch_cls, **kw)
    shape = (B, T, I) if kw.get("batch_first") else (T, B, I)
    x = randn(*shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    with fused_rnn.use_backend(backend_name):
        out, state = torch.compile(fused, fullgraph=True, backend=compiler)(x)
    out_ref, state_ref = ref(x_ref)
    states = state if isinstance(state, tuple) else (state,)
    states_ref = state_ref if isinstance(state_ref, tuple) else (state_ref,)
    # A loss that reaches every output, with weights so no gradient is uniform.
    loss = sum((t * torch.linspace(-1, 1, t.shape[-1])).sum() for t in (out, *states))
    loss_ref = sum((t * torch.linspace(-1, 1, t.shape[-1])).sum() for t in (out_ref, *states_ref))
    loss.backward()
    loss_ref.backward()
    rtol, atol = tolerance(backend_name, torch.float32)
    for a, e, n in zip((out, *states), (out_ref, *states_ref), ("output", "h_n", "c_n")):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
    names = ["input"] + [n for n, _ in fused.named_parameters()]
    for a, e, n in zip(_grads(fused, x), _grads(ref, x_ref), names):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad {n}")


@pytest.mark.parametrize("backend_name", COMPILE_BACKENDS)
def test_compiled_inference_saves_nothing_and_matches(backend_name):
    fused = fused_rnn.LSTM(I, H, num_layers=2)
    ref = _torch_twin(fused, torch.nn.LSTM, input_size=I, hidden_size=H, num_layers=2)
    x = randn(T, B, I)
    with fused_rnn.use_backend(backend_name), torch.no_grad():
        out, (h, c) = torch.compile(fused, fullgraph=True, backend="aot_eager")(x)
        out_ref, (h_ref, c_ref) = ref(x)
    rtol, atol = tolerance(backend_name, torch.float32)
    for a, e, n in zip((out, h, c), (out_ref, h_ref, c_ref), ("output", "h_n", "c_n")):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


@pytest.mark.parametrize("backend_name", COMPILE_BACKENDS)
def test_compiled_module_follows_a_new_batch_size(backend_name):
    fused = fused_rnn.GRU(I, H)
    ref = _torch_twin(fused, torch.nn.GRU, input_size=I, hidden_size=H)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager", dynamic=True)
    rtol, atol = tolerance(backend_name, torch.float32)
    with fused_rnn.use_backend(backend_name):
        for batch in (2, 5, 7):
            x = randn(T, batch, I)
            assert_close(compiled(x)[0], ref(x)[0], rtol=rtol, atol=atol, name=f"output B={batch}")


@pytest.mark.parametrize("backend_name", COMPILE_BACKENDS)
def test_compiled_lengths_out_of_range_fail_when_run(backend_name):
    fused = fused_rnn.AdditiveAttention(4, 5, 6)
    q, k = randn(2, 3, 4), randn(2, 7, 5)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with fused_rnn.use_backend(backend_name), pytest.raises(RuntimeError, match="lengths must lie"):
        compiled(q, k, lengths=torch.tensor([7, 9]))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("backend_name", COMPILE_BACKENDS)
def test_compiled_decoder_loop_of_cells_matches_torch_nn(backend_name, cell, compiler):
    _skip_costly_inductor(compiler, backend_name, cell == "lstm", "the LSTM cell")
    fused_cls, torch_cls = {"lstm": (fused_rnn.LSTMCell, torch.nn.LSTMCell),
                            "gru": (fused_rnn.GRUCell, torch.nn.GRUCell)}[cell]
    fused = fused_cls(I, H)
    ref = torch_cls(I, H)
    ref.load_state_dict(fused.state_dict())

    def decode(module, xs):
        state, outs = None, []
        for x in xs:
            state = module(x, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outs)

    xs = randn(T, B, I, requires_grad=True)
    xs_ref = xs.detach().clone().requires_grad_(True)
    with fused_rnn.use_backend(backend_name):
        out = torch.compile(decode, fullgraph=True, backend=compiler)(fused, xs)
    out_ref = decode(ref, xs_ref)
    (out * torch.linspace(-1, 1, H)).sum().backward()
    (out_ref * torch.linspace(-1, 1, H)).sum().backward()
    rtol, atol = tolerance(backend_name, torch.float32)
    assert_close(out, out_ref, rtol=rtol, atol=atol, name="outputs")
    for a, e, n in zip(_grads(fused, xs), _grads(ref, xs_ref), ["input", "w_ih", "w_hh", "b_ih", "b_hh"]):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad {n}")


ATTENTION = {
    "additive": lambda: fused_rnn.AdditiveAttention(4, 5, 6),
    "general": lambda: fused_rnn.LuongAttention(4, 5, score="general"),
    "dot": lambda: fused_rnn.LuongAttention(5, 5, score="dot"),
}


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("score", list(ATTENTION))
@pytest.mark.parametrize("backend_name", COMPILE_BACKENDS)
def test_compiled_attention_matches_eager(backend_name, score, need_weights, compiler):
    _skip_costly_inductor(compiler, backend_name, score != "dot" and need_weights,
                          "additive and general attention with weights")
    module = ATTENTION[score]()
    Dq = 5 if score == "dot" else 4
    q, k = randn(2, 3, Dq, requires_grad=True), randn(2, 7, 5, requires_grad=True)
    lengths = torch.tensor([7, 4])

    def run(m, q, k):
        context, weights = m(q, k, lengths=lengths, need_weights=need_weights)
        loss = (context * torch.linspace(-1, 1, context.shape[-1])).sum()
        if need_weights:
            loss = loss + (weights * torch.linspace(-1, 1, 7)).sum()
        return context, weights, loss

    with fused_rnn.use_backend(backend_name):
        context, weights, loss = run(torch.compile(module, fullgraph=True, backend=compiler), q, k)
        loss.backward()
        grads = _grads(module, q, k)
        module.zero_grad()
        q_ref, k_ref = (t.detach().clone().requires_grad_(True) for t in (q, k))
        context_ref, weights_ref, loss_ref = run(module, q_ref, k_ref)
        loss_ref.backward()
    rtol, atol = tolerance(backend_name, torch.float32)
    assert_close(context, context_ref, rtol=rtol, atol=atol, name="context")
    assert_close(weights, weights_ref, rtol=rtol, atol=atol, name="weights")
    names = ["query", "keys"] + [n for n, _ in module.named_parameters()]
    for a, e, n in zip(grads, _grads(module, q_ref, k_ref), names):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad {n}")


@pytest.mark.parametrize("name", ["lstm", "attention", "layernorm_gru"])
def test_compiled_backward_inside_autocast_computes_as_its_forward(name):
    """As the eager Functions (test_autocast.py): the custom ops' backward run with autocast
    off, so a backward under ``torch.autocast`` gives the fp32 forward's gradients."""
    if "cpu" not in COMPILE_BACKENDS:
        pytest.skip("the cpu backend is not available (fused_rnn._C not built)")
    torch.manual_seed(0)
    if name == "attention":
        v = randn(12, requires_grad=True)
        model = lambda q, k: fused_rnn.functional.attention(q, k, score="additive", v=v)[0]  # noqa: E731
        args = (randn(2, 3, 12, requires_grad=True), randn(2, 7, 12, requires_grad=True))
        leaves = [*args, v]
    else:
        module = fused_rnn.LSTM(4, 6) if name == "lstm" else fused_rnn.LayerNormGRU(4, 6)
        model = lambda x: module(x)[0]  # noqa: E731
        args = (randn(5, 3, 4, requires_grad=True),)
        leaves = [args[0], *module.parameters()]
    with fused_rnn.use_backend("cpu"):
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        grads = []
        for inside in (False, True):
            out = compiled(*args)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=inside):
                grads.append(torch.autograd.grad(out.sum(), leaves))
    for a, b in zip(*grads):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)
