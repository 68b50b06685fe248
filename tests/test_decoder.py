"""AttentionDecoderCell / AttentionDecoder against the same decoder built from torch.nn
parts on the same weights (outputs and every gradient over a teacher-forced sequence with
key lengths), gradcheck in float64, the decoder loops, and bad-input messages."""

import pathlib
import sys

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn.testing import assert_close, randn, tolerance

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not installed

from benchmarks.decoder_cases import TorchPartsDecoderStep, to_fused_state_dict  # noqa: E402

B, E, H, K, A, TK, STEPS = 3, 5, 6, 7, 4, 5, 3
LENGTHS = torch.tensor([5, 2, 4])
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def make_pair(cell, dtype, score="additive"):
    parts = TorchPartsDecoderStep(E, H, K, A, cell, dtype=dtype)
    fused = fused_rnn.AttentionDecoderCell(E, H, K, A, cell=cell, dtype=dtype)
    fused.load_state_dict(to_fused_state_dict(parts.state_dict()))
    return parts, fused


def state_of(cell, dtype):
    h = randn(B, H, dtype=dtype, requires_grad=True)
    return (h, randn(B, H, dtype=dtype, requires_grad=True)) if cell == "lstm" else h


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_teacher_forced_steps_match_torch_parts(backend, cell, dt):
    dtype = DTYPES[dt]
    rtol, atol = tolerance(backend, dtype)
    parts, fused = make_pair(cell, dtype)
    xs = randn(STEPS, B, E, dtype=dtype, requires_grad=True)
    keys = randn(B, TK, K, dtype=dtype, requires_grad=True)
    state0 = state_of(cell, dtype)
    valid = torch.arange(TK) < LENGTHS[:, None]
    outs = {}
    for name, step in (("parts", parts), ("fused", fused)):
        pk, state, seq = step.project_keys(keys), state0, []
        for t in range(STEPS):
            if name == "fused":
                state, ctx, w = step(xs[t], state, keys, pk, lengths=LENGTHS)
            else:
                state, ctx, w = step(xs[t], state, keys, pk, valid)
            seq += [*flat(state), ctx, w]
        outs[name] = seq
    kinds = [*(["h", "c"] if cell == "lstm" else ["h"]), "context", "weights"]
    names = [f"{k} at step {t}" for t in range(STEPS) for k in kinds]
    for n, a, e in zip(names, outs["fused"], outs["parts"]):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
    assert (outs["fused"][kinds.index("weights")][1, LENGTHS[1]:] == 0).all(), "masked keys got weight"
    ups = [torch.randn_like(t) for t in outs["parts"]]
    leaves = [xs, keys, *flat(state0)]
    grads = {}
    for name, step in (("parts", parts), ("fused", fused)):
        loss = sum((o * u).sum() for o, u in zip(outs[name], ups))
        grads[name] = torch.autograd.grad(loss, leaves + list(step.parameters()))
    param_names = [f"d_{n}" for n in to_fused_state_dict(dict(parts.named_parameters()))]
    assert param_names == [f"d_{n}" for n, _ in fused.named_parameters()]
    for n, a, e in zip(["d_inputs", "d_keys", "d_h0", "d_c0"][:len(leaves)] + param_names,
                       grads["fused"], grads["parts"]):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_gradcheck_step_float64(backend, cell):
    """Every input and parameter of one step; a masked key row and a zero-length row are in."""
    b, e, h, k, a, tk = 2, 3, 3, 2, 2, 3
    fused = fused_rnn.AttentionDecoderCell(e, h, k, a, cell=cell, dtype=torch.float64)
    names = [n for n, _ in fused.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in fused.parameters()]
    x = randn(b, e, dtype=torch.float64, requires_grad=True)
    keys = randn(b, tk, k, dtype=torch.float64, requires_grad=True)
    state = [randn(b, h, dtype=torch.float64, requires_grad=True) for _ in range(2 if cell == "lstm" else 1)]
    lengths = torch.tensor([2, 0])

    def fn(x, keys, *rest):
        st, ps = rest[:len(state)], rest[len(state):]
        st = tuple(st) if cell == "lstm" else st[0]
        new, ctx, w = torch.func.functional_call(fused, dict(zip(names, ps)),
                                                 (x, st, keys), {"lengths": lengths})
        return (*flat(new), ctx, w)

    # The interpreter runs ~0.1 s per kernel call: fast mode there (a few calls, not ~500).
    assert torch.autograd.gradcheck(fn, (x, keys, *state, *params), fast_mode=backend == "triton")


@pytest.mark.parametrize("score", ("dot", "general", "concat"))
def test_luong_scores_match_torch_parts(backend, score):
    """The step with a Luong score is the Luong attention module, then the cell, on cat."""
    dtype = torch.float64
    rtol, atol = tolerance(backend, dtype)
    fused = fused_rnn.AttentionDecoderCell(E, H, H if score == "dot" else K, A, cell="gru",
                                           score=score, dtype=dtype)
    keys = randn(B, TK, H if score == "dot" else K, dtype=dtype, requires_grad=True)
    x, s = randn(B, E, dtype=dtype), randn(B, H, dtype=dtype, requires_grad=True)
    att, cell = fused.attention, fused.cell
    valid = torch.arange(TK) < LENGTHS[:, None]
    if score == "concat":
        e_ = torch.tanh(att.query_proj(s).unsqueeze(1) + att.key_proj(keys)) @ att.v
    else:
        q = att.query_proj(s) if score == "general" else s
        e_ = torch.bmm(keys, q.unsqueeze(2)).squeeze(2)
    w_ref = e_.masked_fill(~valid, float("-inf")).softmax(-1)
    ctx_ref = torch.bmm(w_ref.unsqueeze(1), keys).squeeze(1)
    torch_cell = nn.GRUCell(E + keys.shape[-1], H, dtype=dtype)
    torch_cell.load_state_dict(cell.state_dict())
    s_ref = torch_cell(torch.cat([x, ctx_ref], -1), s)
    s_new, ctx, w = fused(x, s, keys, lengths=LENGTHS)
    for n, a_, e2 in (("state", s_new, s_ref), ("context", ctx, ctx_ref), ("weights", w, w_ref)):
        assert_close(a_, e2, rtol=rtol, atol=atol, name=n)
    g = torch.autograd.grad((s_new.sum() + ctx.sum()), (keys, s))
    g_ref = torch.autograd.grad((s_ref.sum() + ctx_ref.sum()), (keys, s))
    for n, a_, e2 in zip(("d_keys", "d_state"), g, g_ref):
        assert_close(a_, e2, rtol=rtol, atol=atol, name=n)


def test_torch_parts_model_loads_and_state_dict_keys():
    """A decoder built from torch.nn parts converts by renaming keys, both ways."""
    parts, fused = make_pair("lstm", torch.float32)
    assert set(fused.state_dict()) == {
        "attention.query_proj.weight", "attention.query_proj.bias", "attention.key_proj.weight",
        "attention.v", "cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "cell.bias_hh"}
    assert isinstance(fused.cell, nn.LSTMCell) and fused.cell.weight_ih.shape == (4 * H, E + K)
    for k, t in fused.state_dict().items():
        assert torch.equal(t, to_fused_state_dict(parts.state_dict())[k]), k


# --- the decoder loops ---

V = 9


def make_decoder(cell="gru"):
    return fused_rnn.AttentionDecoder(fused_rnn.AttentionDecoderCell(E, H, K, A, cell=cell),
                                      nn.Embedding(V, E), nn.Linear(H + K, V))


@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_teacher_forcing_is_the_loop_of_steps(cell):
    dec = make_decoder(cell)
    keys, tokens = randn(B, TK, K), torch.randint(0, V, (B, 4))
    state0 = tuple(randn(B, H) for _ in range(2)) if cell == "lstm" else randn(B, H)
    logits, state, w = dec(tokens, state0, keys, lengths=LENGTHS)
    pk, st = dec.cell.project_keys(keys), state0
    for t in range(4):
        st, ctx, w_t = dec.cell(dec.embedding(tokens[:, t]), st, keys, pk, lengths=LENGTHS)
        h = st[0] if cell == "lstm" else st
        assert_close(logits[:, t], dec.output(torch.cat([h, ctx], -1)), rtol=1e-5, atol=1e-6, name=f"logits {t}")
        assert_close(w[:, t], w_t, rtol=1e-5, atol=1e-6, name=f"weights {t}")
    for a, e_ in zip(flat(state), flat(st)):
        assert_close(a, e_, rtol=1e-5, atol=1e-6, name="final state")


def test_greedy_feeds_back_the_argmax_and_stops_at_eos():
    dec = make_decoder()
    keys = randn(B, TK, K)
    with torch.no_grad():
        tokens, w = dec.greedy(torch.zeros(B, dtype=torch.long), None, keys, 6, lengths=LENGTHS)
        assert tokens.shape == (B, 6) and w.shape == (B, 6, TK)
        # The same tokens, teacher-forced with the greedy choices as inputs.
        forced = torch.cat([torch.zeros(B, 1, dtype=torch.long), tokens[:, :-1]], 1)
        logits, _, _ = dec(forced, None, keys, lengths=LENGTHS)
        assert torch.equal(logits.argmax(-1), tokens)
        eos = int(tokens[0, 1])
        stopped, _ = dec.greedy(torch.zeros(B, dtype=torch.long), None, keys, 6,
                                lengths=LENGTHS, eos=eos)
        first = [int((row == eos).nonzero()[0]) if (row == eos).any() else 6 for row in tokens]
        assert stopped.shape[1] == min(6, max(first) + 1)
        assert torch.equal(stopped, tokens[:, :stopped.shape[1]])


def test_greedy_with_a_next_input_callable():
    dec = fused_rnn.AttentionDecoder(fused_rnn.AttentionDecoderCell(E, H, K, A))
    proj = nn.Linear(H + K, E)
    keys, start = randn(B, TK, K), randn(B, E)
    with torch.no_grad():
        out, w = dec.greedy(start, None, keys, 3, next_input=lambda h, c: proj(torch.cat([h, c], -1)))
        st, x = None, start
        for t in range(3):
            st, ctx, _ = dec.cell(x, st, keys)
            x = proj(torch.cat([st[0], ctx], -1))
            assert_close(out[:, t], x, rtol=1e-5, atol=1e-6, name=f"output {t}")


# --- bad input ---

@pytest.mark.parametrize("call,match", [
    (lambda s, d, k: s(randn(B, E + 1), None, k), r"input must have shape \(batch, 5\)"),
    (lambda s, d, k: s(randn(E), None, k), r"input must have shape"),
    (lambda s, d, k: s(randn(B, E), randn(B, H), k), r"state of an LSTM decoder must be a tuple"),
    (lambda s, d, k: s(randn(B, E), (randn(B, H + 1), randn(B, H)), k), r"state\[0\] \(h\) must have shape \(3, 6\)"),
    (lambda s, d, k: s(randn(B, E), (randn(B, H), randn(B, H).double()), k), r"state\[1\] \(c\) has dtype torch.float64 but input"),
    (lambda s, d, k: s(randn(B, E), None, randn(B, K)), r"keys must be 3-D"),
    (lambda s, d, k: s(randn(B, E), None, k, values=randn(B, TK, K + 1)), r"values must have shape \(batch, keys' steps, 7\)"),
    (lambda s, d, k: s(randn(B, E), None, k, lengths=[1, 2]), r"lengths must be 1-D"),
    (lambda s, d, k: s(randn(B, E), None, k, lengths=[1, 2, 9]), r"lengths must lie in \[0, 5\]"),
    (lambda s, d, k: d(torch.zeros(B, 2, dtype=torch.long), None, k, lengths=LENGTHS, mask=torch.ones(B, TK, dtype=torch.bool)), r"lengths or mask, not both"),
    (lambda s, d, k: d(randn(B, 2, E), None, k), r"inputs must be tokens \[batch, steps\]"),
    (lambda s, d, k: d.greedy(torch.zeros(B, dtype=torch.long), None, k, 0), r"steps must be a positive int"),
    (lambda s, d, k: fused_rnn.AttentionDecoder(s).greedy(randn(B, E), None, k, 2), r"needs an embedding and an output layer"),
    (lambda s, d, k: fused_rnn.AttentionDecoderCell(E, H, K, cell="rnn"), r"cell must be 'lstm' or 'gru'"),
    (lambda s, d, k: fused_rnn.AttentionDecoderCell(E, H, K, score="cosine"), r"score must be 'additive'"),
    (lambda s, d, k: fused_rnn.AttentionDecoder(nn.GRUCell(E, H)), r"cell must be an AttentionDecoderCell"),
], ids=["input-size", "input-1d", "lstm-state-not-tuple", "h-shape", "c-dtype", "keys-2d",
        "values-size", "lengths-batch", "lengths-range", "lengths-and-mask", "inputs-not-tokens",
        "steps-zero", "greedy-no-embedding", "cell-name", "score-name", "decoder-cell-type"])
def test_bad_input_names_the_argument(call, match):
    step = fused_rnn.AttentionDecoderCell(E, H, K, A)
    dec = fused_rnn.AttentionDecoder(step, nn.Embedding(V, E), nn.Linear(H + K, V))
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        call(step, dec, randn(B, TK, K))


# --- the cpu backend's packed weights inside weights_unchanged() ---

needs_cpu = pytest.mark.skipif("cpu" not in fused_rnn.available_backends(),
                               reason="the cpu backend (fused_rnn._C) is not built")


@needs_cpu
@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_weights_unchanged_repacks_after_in_place_updates(cell):
    """Inside the scope the packed weights are reused (a write through .data, which bumps no
    version, is not seen: that is the scope's contract), and an in-place update of a
    weight, which bumps its version, is (an optimizer step inside a decode)."""
    torch_cls, fused_cls = (nn.LSTMCell, fused_rnn.LSTMCell) if cell == "lstm" else (nn.GRUCell, fused_rnn.GRUCell)
    ref, fused = torch_cls(E, H), fused_cls(E, H)
    fused.load_state_dict(ref.state_dict())
    x = randn(B, E)
    hx = (randn(B, H), randn(B, H)) if cell == "lstm" else randn(B, H)
    first = lambda out: out[0] if cell == "lstm" else out  # noqa: E731
    with fused_rnn.use_backend("cpu"), fused_rnn.AttentionDecoderCell.weights_unchanged():
        before = first(fused(x, hx))
        fused.weight_hh.data.mul_(0.5)  # no version bump: the cached panels are still used
        assert torch.equal(first(fused(x, hx)), before), "the scope did not reuse the packed weights"
        with torch.no_grad():
            fused.weight_hh.mul_(1.5)  # a version bump: repacked, and now 0.75 x the original
            fused.weight_ih.add_(0.1)
            ref.weight_hh.mul_(0.75)
            ref.weight_ih.add_(0.1)
        assert_close(first(fused(x, hx)), first(ref(x, hx)), rtol=1e-5, atol=1e-6,
                     name="state after an in-place update")
    # Outside any scope nothing is cached: a .data write is seen at once.
    fused.weight_ih.data.mul_(2)
    ref.weight_ih.data.mul_(2)
    with fused_rnn.use_backend("cpu"):
        assert_close(first(fused(x, hx)), first(ref(x, hx)), rtol=1e-5, atol=1e-6,
                     name="state after a .data write outside the scope")


@needs_cpu
def test_weights_unchanged_scope_never_outlives_a_freed_weight():
    """A new weight at a freed weight's address is packed afresh (weak storage references)."""
    x, h = randn(B, E), randn(B, H)
    with fused_rnn.use_backend("cpu"), fused_rnn.AttentionDecoderCell.weights_unchanged():
        for _ in range(4):
            ref = nn.GRUCell(E, H)
            fused = fused_rnn.GRUCell(E, H)
            fused.load_state_dict(ref.state_dict())
            assert_close(fused(x, h), ref(x, h), rtol=1e-5, atol=1e-6, name="fresh cell")
            del fused
