"""Unusual but valid input on every backend, against torch.nn or the contiguous answer:
empty batches and empty key sets (gradients included), weights shared between modules,
and layouts a kernel might mishandle (feature-major "channels-last" memory, transposed,
strided and offset views of inputs, states and weights)."""

import pytest
import torch

import fused_rnn
from fused_rnn import functional as F
from fused_rnn.testing import assert_close, tolerance

T, B, I, H = 4, 3, 5, 6
RTOL, ATOL = 1e-7, 1e-9  # fp64 throughout


def _grads(outputs, leaves):
    loss = sum((o * (k + 1)).sum() for k, o in enumerate(outputs))
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def test_empty_batch_runs_backward_as_torch(backend):
    torch_m = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).double()
    fused_m = fused_rnn.LSTM(I, H, num_layers=2, bidirectional=True).double()
    fused_m.load_state_dict(torch_m.state_dict())
    results = []
    for m, be in ((torch_m, None), (fused_m, backend)):
        x = torch.randn(T, 0, I, dtype=torch.float64, requires_grad=True)
        h0 = torch.zeros(4, 0, H, dtype=torch.float64, requires_grad=True)
        with fused_rnn.use_backend(be or "reference"):
            out, (h, c) = m(x, (h0, torch.zeros(4, 0, H, dtype=torch.float64)))
        results.append([out, h, c] + list(_grads([out, h, c], [x, h0] + list(m.parameters()))))
    for k, (a, e) in enumerate(zip(*results)):
        e = torch.zeros_like(a) if e is None else e  # torch leaves unused weights' grads None
        assert_close(a, e, rtol=RTOL, atol=ATOL, name=f"tensor {k}")


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_empty_batch_as_torch(backend, cell):
    torch_c = getattr(torch.nn, cell)(I, H).double()
    fused_c = getattr(fused_rnn, cell)(I, H).double()
    fused_c.load_state_dict(torch_c.state_dict())
    x = torch.randn(0, I, dtype=torch.float64)
    with fused_rnn.use_backend(backend):
        got = fused_c(x)
    want = torch_c(x)
    for a, e in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert a.shape == e.shape == (0, H)


@pytest.mark.parametrize("shape", [(0, 2, 4), (2, 0, 4), (2, 3, 0)], ids=["B=0", "Tq=0", "Tk=0"])
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_attention_with_empty_axes(backend, shape, score):
    """No keys at all means an empty valid set: zero context, zero gradients."""
    b, tq, tk = shape
    q = torch.randn(b, tq, I, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, tk, I, dtype=torch.float64, requires_grad=True)
    vals = torch.randn(b, tk, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(I, dtype=torch.float64) if score == "additive" else None
    with fused_rnn.use_backend(backend):
        ctx, w = F.attention(q, k, vals, score=score, v=v)
    assert ctx.shape == (b, tq, 3) and w.shape == (b, tq, tk)
    assert torch.equal(ctx, torch.zeros_like(ctx))
    for g, leaf in zip(_grads([ctx], [q, k, vals]), (q, k, vals)):
        assert g is None or (g.shape == leaf.shape and not g.any())


def test_weights_shared_between_modules(backend):
    """An encoder and a decoder sharing W_hh (and the decoder's biases): the shared
    gradients sum both uses, as with torch.nn."""
    def pair(lib):
        torch.manual_seed(7)
        enc, dec = lib.GRU(I, H).double(), lib.GRU(H, H).double()
        dec.weight_hh_l0, dec.bias_hh_l0 = enc.weight_hh_l0, enc.bias_hh_l0
        return enc, dec

    results = []
    for lib, be in ((torch.nn, "reference"), (fused_rnn, backend)):
        enc, dec = pair(lib)
        x = torch.randn(T, B, I, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        with fused_rnn.use_backend(be):
            mid, h = enc(x)
            out, h2 = dec(mid, h)
        params = list(enc.parameters()) + [dec.weight_ih_l0, dec.bias_ih_l0]
        results.append([out, h2] + list(_grads([out, h2], params)))
    rtol, atol = tolerance(backend, torch.float64)
    for k, (a, e) in enumerate(zip(*results)):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"tensor {k}")


def _views(t: torch.Tensor) -> dict:
    """The same values as ``t`` in layouts a kernel may get wrong."""
    feature_major = t.permute(*range(t.dim() - 1, -1, -1)).contiguous().permute(
        *range(t.dim() - 1, -1, -1))  # "channels-last" for sequences: features outermost
    return {
        "feature-major": feature_major,
        "offset": torch.cat([torch.randn_like(t[:1]), t])[1:],
        "strided": torch.stack([t, torch.randn_like(t)], -1)[..., 0],
    }


LAYOUTS = ["feature-major", "offset", "strided"]


def _layout_case(backend, layout, views_of_weights):
    m = torch.nn.GRU(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    w = [p.detach() for p in m._flat_weights]
    q, k = torch.randn(B, 2, I, dtype=torch.float64), torch.randn(B, 7, I, dtype=torch.float64)
    cx, ch = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)

    def run(x_, h0_, w_, q_, k_, cx_, ch_):
        with fused_rnn.use_backend(backend):
            y, hn = F.gru(x_, h0_, w_)
            ctx, att = F.attention(q_, k_, lengths=[7, 3, 5])
            hc = F.gru_cell(cx_, ch_, *w_)
        return [y, hn, ctx, att, hc]

    plain = run(x, h0, w, q, k, cx, ch)
    if views_of_weights:
        views = run(x, h0, [_views(t)[layout] for t in w], q, k, cx, ch)
    else:
        views = run(*(_views(t)[layout] for t in (x, h0)), w,
                    *(_views(t)[layout] for t in (q, k, cx, ch)))
    rtol, atol = tolerance(backend, torch.float64)  # a strided GEMM may sum in another order
    for name, a, e in zip(["output", "h_n", "context", "weights", "cell"], views, plain):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"{layout} {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_of_inputs_and_states(backend, layout):
    _layout_case(backend, layout, views_of_weights=False)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_of_weights(backend, layout):
    _layout_case(backend, layout, views_of_weights=True)
