"""Headwise recurrence (``num_heads``) and DropConnect (``recurrent_dropout``) on LSTM/GRU:
each equals torch.nn's module given the weights it stands for (the dense block-diagonal
``W_hh``; ``W_hh`` times the same mask), outputs and every gradient, on every backend."""

import pytest
import torch
import torch.nn.functional as TF

import fused_rnn
from fused_rnn.modules.recurrent_weights import dense_to_headwise, headwise_to_dense
from fused_rnn.testing import assert_close, randn, random_lengths, tolerance

KINDS = {"LSTM": (fused_rnn.LSTM, torch.nn.LSTM), "GRU": (fused_rnn.GRU, torch.nn.GRU)}


def _torch_twin(fused, kind, w_hh_of):
    """torch.nn's module with ``fused``'s weights, each W_hh replaced by ``w_hh_of(name, w)``
    at each call (a differentiable function of the fused parameter, so gradients reach the
    fused one; drawn in parameter order, as the fused module draws its masks)."""
    ref = KINDS[kind][1](fused.input_size, fused.hidden_size, fused.num_layers,
                         bidirectional=fused.bidirectional, batch_first=fused.batch_first,
                         dtype=fused.weight_ih_l0.dtype)

    def run(x, hx=None):
        ws = [w_hh_of(n, w) if n.startswith("weight_hh") else w
              for n, w in zip(fused._flat_weights_names, fused._flat_weights)]
        return torch.func.functional_call(ref, dict(zip(fused._flat_weights_names, ws)), (x, hx))
    return run


def _run_both(fused, twin, x, lengths=None):
    if lengths is not None:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_f, out_t = fused(x)[0], twin(x)[0]
    if lengths is not None:
        out_f, out_t = (torch.nn.utils.rnn.pad_packed_sequence(o)[0] for o in (out_f, out_t))
    return out_f, out_t


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dt", [torch.float64, torch.float32])
def test_headwise_equals_dense_block_diagonal(backend, kind, dt):
    if backend == "triton" and dt == torch.float32:
        pytest.skip("triton interpreter budget: fp32 runs the same kernels as fp64")
    torch.manual_seed(0)
    m = KINDS[kind][0](6, 8, num_layers=2, bidirectional=True, num_heads=4).to(dt)
    G = 4 if kind == "LSTM" else 3
    assert m.weight_hh_l1_reverse.shape == (4, G * 2, 2)
    twin = _torch_twin(m, kind, lambda n, w: headwise_to_dense(w))
    x = randn(5, 3, 6, dtype=dt, requires_grad=True)
    lengths = random_lengths(3, 5)
    out_f, out_t = _run_both(m, twin, x, lengths)
    rtol, atol = tolerance(backend, dt)
    assert_close(out_f, out_t, rtol=rtol, atol=atol, name="output")
    params = list(m.parameters())
    g = torch.randn_like(out_f)
    grads_f = torch.autograd.grad(out_f, [x, *params], g, retain_graph=True)  # shared packing
    grads_t = torch.autograd.grad(out_t, [x, *params], g)
    names = ["input"] + [n for n, _ in m.named_parameters()]
    for a, e, n in zip(grads_f, grads_t, names):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad {n}")


@pytest.mark.parametrize("kind", KINDS)
def test_zoneout_headwise_equals_dense(backend, kind):
    """With zoneout the layers run one recurrence per head too: the variant recurrence on
    the dense block-diagonal W_hh under the same seed (the same keeps) computes the same,
    outputs and gradients."""
    from fused_rnn.ops.variants.function import variant_recurrence
    from fused_rnn.ops.variants.layout import VariantWeights

    m = KINDS[kind][0](6, 8, bidirectional=True, num_heads=4, zoneout=0.3).double().train()
    x = randn(5, 3, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    out = m(x)[0]
    dense = [[VariantWeights(w.w_ih, headwise_to_dense(w.w_hh), w.b_ih, w.b_hh) for w in dirs]
             for dirs in m._variant_weights()]
    torch.manual_seed(3)
    want = variant_recurrence(m.mode, x, None, dense, training=True, zoneout=0.3)[0]
    rtol, atol = tolerance(backend, torch.float64)
    assert_close(out, want, rtol=rtol, atol=atol, name="output")
    g = torch.randn_like(out)
    leaves = [x, *m.parameters()]
    for a, e in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(want, leaves, g)):
        assert_close(a, e, rtol=rtol, atol=atol, name="grad")


def test_headwise_layers_run_one_recurrence_per_head(monkeypatch):
    """The kernels see each head on its own (Hh units, its W_hh block), never the dense
    block-diagonal matrix."""
    import fused_rnn.functional as functional

    seen, real = [], functional.recurrence_layer

    def spy(ops, mode, reverse, x, h0, c0, w, lengths=None):
        seen.append((tuple(w.w_ih.shape), tuple(w.w_hh.shape), tuple(h0.shape)))
        return real(ops, mode, reverse, x, h0, c0, w, lengths)

    monkeypatch.setattr(functional, "recurrence_layer", spy)
    m = fused_rnn.GRU(6, 8, num_heads=4, bidirectional=True).double()
    m(randn(5, 3, 6, dtype=torch.float64))
    assert seen == [((6, 6), (6, 2), (3, 2))] * 8  # 2 directions x 4 heads of 2 units


def test_functional_takes_headwise_blocks():
    """fused_rnn.functional.lstm with W_hh as blocks [K, 4*Hh, Hh] is the dense call."""
    from fused_rnn import functional

    torch.manual_seed(0)
    w = [randn(16, 3, dtype=torch.float64), randn(2, 8, 2, dtype=torch.float64),
         randn(16, dtype=torch.float64), randn(16, dtype=torch.float64)]
    x = randn(5, 2, 3, dtype=torch.float64)
    got = functional.lstm(x, None, w)
    want = functional.lstm(x, None, [w[0], headwise_to_dense(w[1]), *w[2:]])
    for a, e in zip(got[:1] + got[1], want[:1] + want[1]):
        assert_close(a, e, rtol=1e-12, atol=1e-12, name="lstm")
    with pytest.raises(ValueError, match=r"headwise blocks must have shape \(num_heads, 4 \* head_size"):
        functional.lstm(x, None, [w[0], randn(2, 8, 3, dtype=torch.float64), *w[2:]])


def test_headwise_gradient_stays_in_the_blocks():
    """The dense matrix's gradient outside the blocks is not the blocks' business: the
    blocks' gradient is the dense gradient read at the block positions, nothing more."""
    blocks = randn(3, 8, 2, dtype=torch.float64, requires_grad=True)
    dense_grad = torch.randn(8 * 3, 6, dtype=torch.float64)
    (headwise_to_dense(blocks) * dense_grad).sum().backward()
    assert_close(blocks.grad, dense_to_headwise(dense_grad * (headwise_to_dense(blocks) != 0), 3),
                 rtol=0, atol=0, name="block grad")
    assert torch.autograd.gradcheck(headwise_to_dense, (blocks,))


def test_dense_layout_is_the_documented_one():
    """Row g*H + k*Hh + j of the dense W_hh (gate g, unit j of head k) is row g*Hh + j of
    block k, over the columns k*Hh .. k*Hh + Hh - 1; every other entry is zero."""
    K, G, Hh = 3, 4, 2
    H = K * Hh
    blocks = randn(K, G * Hh, Hh, dtype=torch.float64)
    dense = headwise_to_dense(blocks)
    expected = torch.zeros(G * H, H, dtype=torch.float64)
    for g in range(G):
        for k in range(K):
            for j in range(Hh):
                expected[g * H + k * Hh + j, k * Hh:(k + 1) * Hh] = blocks[k, g * Hh + j]
    assert torch.equal(dense, expected)


def test_dense_round_trip_and_refusal():
    blocks = randn(4, 12, 3, dtype=torch.float64)
    dense = headwise_to_dense(blocks)
    assert dense.shape == (48, 12)
    assert torch.equal(dense_to_headwise(dense, 4), blocks)
    dense[0, -1] = 1.0  # head 0's gate row reading head 3's state
    with pytest.raises(ValueError, match="outside the 4 diagonal blocks"):
        dense_to_headwise(dense, 4)


def test_headwise_state_dict_stores_blocks():
    m = fused_rnn.LSTM(4, 8, num_heads=2, bidirectional=True)
    sd = m.state_dict()
    assert list(sd) == list(torch.nn.LSTM(4, 8, bidirectional=True).state_dict())
    assert sd["weight_hh_l0"].shape == (2, 16, 4)
    m2 = fused_rnn.LSTM(4, 8, num_heads=2, bidirectional=True)
    m2.load_state_dict(sd)
    x = randn(3, 2, 4)
    assert torch.equal(m(x)[0], m2(x)[0])
    assert "num_heads=2" in repr(m)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fused_rnn.LSTM(4, 8, bidirectional=True).load_state_dict(sd)


@pytest.mark.parametrize("kind", KINDS)
def test_dropconnect_matches_torch_with_the_same_mask(backend, kind):
    """Training: one mask per W_hh per forward, drawn in parameter order from torch's
    generator; torch.nn on W_hh * mask / (1 - p) with the masks of the same seed agrees."""
    dt = torch.float64
    p = 0.4
    m = KINDS[kind][0](5, 6, num_layers=2, bidirectional=True, recurrent_dropout=p).to(dt)
    x = randn(4, 3, 5, dtype=dt, requires_grad=True)
    twin = _torch_twin(m, kind, lambda n, w: TF.dropout(w, p, training=True))
    torch.manual_seed(7)
    out_f = m(x)[0]
    torch.manual_seed(7)
    out_t = twin(x)[0]
    rtol, atol = tolerance(backend, dt)
    assert_close(out_f, out_t, rtol=rtol, atol=atol, name="output")
    params = list(m.parameters())
    g = torch.randn_like(out_f)
    names = ["input"] + [n for n, _ in m.named_parameters()]
    grads_f = torch.autograd.grad(out_f, [x, *params], g)
    for a, e, n in zip(grads_f, torch.autograd.grad(out_t, [x, *params], g), names):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad {n}")
    # A dropped weight gets no gradient: the mask really reached the recurrence.
    assert grads_f[names.index("weight_hh_l0")].eq(0).sum() > 0.2 * m.weight_hh_l0.numel()


@pytest.mark.parametrize("kind", KINDS)
def test_dropconnect_off_is_the_plain_module(kind):
    """p = 0 in training and any p in evaluation: exactly the plain module."""
    torch.manual_seed(3)
    plain = KINDS[kind][0](5, 6, num_layers=2)
    for p, training in ((0.0, True), (0.5, False)):
        m = KINDS[kind][0](5, 6, num_layers=2, recurrent_dropout=p)
        m.load_state_dict(plain.state_dict())
        m.train(training)
        x = randn(4, 3, 5)
        assert torch.equal(m(x)[0], plain(x)[0])


def test_dropconnect_draws_fresh_masks_and_repeats_under_a_seed():
    m = fused_rnn.GRU(5, 6, recurrent_dropout=0.5)
    x = randn(4, 3, 5)
    torch.manual_seed(1)
    a, b = m(x)[0], m(x)[0]
    torch.manual_seed(1)
    assert torch.equal(m(x)[0], a)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_heads": 3}, "num_heads must divide hidden_size"),
    ({"num_heads": 0}, "num_heads must be a positive int"),
    ({"num_heads": 2, "proj_size": 4}, "does not combine with proj_size"),
    ({"recurrent_dropout": 1.5}, "recurrent_dropout must be a number in"),
    ({"recurrent_dropout": "0.1"}, "recurrent_dropout must be a number in"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fused_rnn.LSTM(4, 8, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(backend, kind):
    """Headwise and DropConnect together, every parameter; the mask is re-drawn from the same
    seed at each evaluation, so the function gradcheck sees is fixed."""
    m = KINDS[kind][0](3, 4, bidirectional=True, num_heads=2, recurrent_dropout=0.3).double()
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        torch.manual_seed(11)
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))[0]

    x = randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=backend == "triton")


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU", "LSTM", "GRU"])
def test_dropconnect_composes_with_zoneout_layer_norm_and_heads(cls):
    """DropConnect masks come first (parameter order), then the zoneout keeps: a module
    without DropConnect given the dropped W_hh under the same seed computes the same."""
    kw = {"zoneout": 0.3, **({"num_heads": 2} if cls in ("LSTM", "GRU") else {})}
    m = getattr(fused_rnn, cls)(5, 6, bidirectional=True, recurrent_dropout=0.4, **kw).double()
    twin = getattr(fused_rnn, cls)(5, 6, bidirectional=True, **kw).double()
    twin.load_state_dict(m.state_dict())
    x = randn(4, 3, 5, dtype=torch.float64)
    torch.manual_seed(5)
    out = m(x)[0]
    torch.manual_seed(5)
    dropped = {n: TF.dropout(p, 0.4, training=True) if n.startswith("weight_hh") else p
               for n, p in twin.named_parameters()}
    expected = torch.func.functional_call(twin, dropped, (x,))[0]
    assert_close(out, expected, rtol=1e-12, atol=1e-12, name="output")
    assert "recurrent_dropout=0.4" in repr(m) and "zoneout=0.3" in repr(m)
