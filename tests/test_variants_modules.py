"""LayerNormLSTM, LayerNormGRU and the zoneout keyword of LSTM/GRU on every backend with the
variants op, against the papers' equations (tests/test_variants_reference.py) stacked here
as the modules document: keeps drawn per layer and direction (h, then c), dropout between
layers, all under the same seed."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn import backends
from fused_rnn.ops.recurrence.cells import GRU, LSTM
from fused_rnn.ops.variants import reference
from fused_rnn.ops.variants.function import variant_layer, variant_recurrence
from fused_rnn.ops.variants.layout import VariantWeights
from fused_rnn import testing
from fused_rnn.testing import assert_close, randn, tolerance
from test_variants_reference import make_args, paper_layer

T, B, I, H = 5, 3, 4, 6
VARIANT_BACKENDS = [b for b in testing.testable_backends() if "variants" in backends.get_backend(b).modules]


@pytest.fixture(params=VARIANT_BACKENDS)
def vbackend(request):
    """Each available backend that has the variants op, forced for the test."""
    with fused_rnn.use_backend(request.param):
        yield request.param


def _weights(m, li, sfx):
    g = lambda name: getattr(m, f"{name}_l{li}{sfx}", None)  # noqa: E731
    return VariantWeights(g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"),
                          g("layer_norm_ih"), g("layer_norm_hh"), g("layer_norm_c_weight"),
                          g("layer_norm_c_bias"))


def paper_module(m, x, hx, lengths):
    """The module's computation from the paper step: time-major x [T, B, I], hx or None."""
    D, lstm, p = 2 if m.bidirectional else 1, m.mode == LSTM, m.zoneout
    L, Bn, Hn = m.num_layers, x.shape[1], m.hidden_size
    if hx is None:
        zeros = x.new_zeros(L * D, Bn, Hn)
        hx = (zeros, zeros) if lstm else zeros
    h0, c0 = hx if lstm else (hx, None)
    h_n, c_n = [], []
    for li in range(L):
        outs = []
        for d in range(D):
            k = li * D + d
            if p == 0:
                kh = kc = None
            elif m.training:
                kh = torch.bernoulli(torch.full((x.shape[0], Bn, Hn), p, dtype=x.dtype))
                kc = torch.bernoulli(torch.full((x.shape[0], Bn, Hn), p, dtype=x.dtype)) if lstm else None
            else:
                kh = kc = torch.full((x.shape[0], Bn, Hn), p, dtype=x.dtype)
            y, h, c = paper_layer(m.mode, d == 1, x, h0[k], None if c0 is None else c0[k],
                                  _weights(m, li, "_reverse" if d else ""), lengths, kh, kc)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outs, -1)
        if m.training and m.dropout > 0 and li < L - 1:
            x = F.dropout(x, m.dropout, training=True)
    return x, torch.stack(h_n), (torch.stack(c_n) if lstm else None)


def _check_against_paper(m, x, hx, backend, lengths=None, batch_first=False, seed=5):
    """Module (fused) vs paper on the same weights and seed: outputs, the input's and
    every parameter's gradients."""
    rtol, atol = tolerance(backend, x.dtype)
    torch.manual_seed(seed)
    out, state = m(x, hx)
    torch.manual_seed(seed)
    xt = x.transpose(0, 1) if batch_first else x
    want_out, want_h, want_c = paper_module(m, xt, hx, lengths)
    if batch_first:
        want_out = want_out.transpose(0, 1)
    got = [out, *(state if m.mode == LSTM else (state,))]
    want = [want_out, want_h] + ([want_c] if m.mode == LSTM else [])
    for n, a, e in zip(("output", "h_n", "c_n"), got, want):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
    ups = [torch.randn_like(t) for t in want]
    names, params = zip(*m.named_parameters())
    leaves = [x, *params]
    g_got = torch.autograd.grad(sum((a * u).sum() for a, u in zip(got, ups)), leaves)
    g_want = torch.autograd.grad(sum((a * u).sum() for a, u in zip(want, ups)), leaves)
    for n, a, e in zip(("input",) + names, g_got, g_want):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad {n}")


MODULE_CASES = [
    pytest.param(cls, layers, bidir, bf, p, id=f"{cls}-L{layers}-{'bi' if bidir else 'uni'}"
                 f"-{'bf' if bf else 'tm'}-p{p}")
    for cls, (layers, bidir, bf), p in itertools.product(
        ("LayerNormLSTM", "LayerNormGRU", "LSTM", "GRU"),
        ((1, False, False), (2, True, True)), (0.0, 0.3))
    if not (cls in ("LSTM", "GRU") and p == 0)  # zoneout 0 is torch.nn's: test_zoneout_zero_is_torch
]


@pytest.mark.parametrize("cls,layers,bidir,bf,p", MODULE_CASES)
def test_module_matches_paper_in_training(vbackend, cls, layers, bidir, bf, p):
    """p > 0 in training: the same masks as the paper stack draws under the same seed."""
    m = getattr(fused_rnn, cls)(I, H, num_layers=layers, bidirectional=bidir, batch_first=bf,
                                dropout=0.25 if layers > 1 else 0.0, zoneout=p,
                                dtype=torch.float64)
    _perturb_norms(m)
    x = randn(*((B, T, I) if bf else (T, B, I)), dtype=torch.float64, requires_grad=True)
    _check_against_paper(m.train(), x, None, vbackend, batch_first=bf)


@pytest.mark.parametrize("cls", ("LayerNormLSTM", "LayerNormGRU", "LSTM", "GRU"))
def test_eval_uses_the_expectation(vbackend, cls):
    m = getattr(fused_rnn, cls)(I, H, bidirectional=True, zoneout=0.4, dtype=torch.float64).eval()
    _perturb_norms(m)
    x = randn(T, B, I, dtype=torch.float64, requires_grad=True)
    lstm = m.mode == LSTM
    h0 = randn(2, B, H, dtype=torch.float64, requires_grad=True)
    hx = (h0, randn(2, B, H, dtype=torch.float64, requires_grad=True)) if lstm else h0
    _check_against_paper(m, x, hx, vbackend)
    # and it is deterministic: no mask is drawn in evaluation
    a, b = m(x, hx)[0], m(x, hx)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("cls", ("LayerNormLSTM", "LayerNormGRU"))
def test_packed_sequence_with_unsorted_lengths(vbackend, cls):
    m = getattr(fused_rnn, cls)(I, H, num_layers=2, bidirectional=True, zoneout=0.2,
                                dtype=torch.float64).train()
    _perturb_norms(m)
    lengths = torch.tensor([3, T, 2])
    x = randn(T, B, I, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    torch.manual_seed(3)
    out, _ = m(packed)
    padded, got_len = pad_packed_sequence(out)
    assert torch.equal(got_len, lengths)
    torch.manual_seed(3)
    want = paper_module(m, x, None, lengths)[0]
    rtol, atol = tolerance(vbackend, torch.float64)
    assert_close(padded, want, rtol=rtol, atol=atol, name="packed output")
    up = torch.randn_like(want)
    assert_close(torch.autograd.grad((padded * up).sum(), x)[0],
                 torch.autograd.grad((want * up).sum(), x)[0], rtol=rtol, atol=atol,
                 name="grad input")


@pytest.mark.parametrize("cls", ("LayerNormLSTM", "LayerNormGRU"))
def test_unbatched_input_is_batch_of_one(vbackend, cls):
    m = getattr(fused_rnn, cls)(I, H, num_layers=2, dtype=torch.float64).eval()
    _perturb_norms(m)
    x = randn(T, I, dtype=torch.float64)
    h0 = randn(2, H, dtype=torch.float64)
    hx = (h0, randn(2, H, dtype=torch.float64)) if m.mode == LSTM else h0
    out, state = m(x, hx)
    hx1 = tuple(t.unsqueeze(1) for t in hx) if m.mode == LSTM else h0.unsqueeze(1)
    out1, state1 = m(x.unsqueeze(1), hx1)
    assert out.shape == (T, H)
    assert_close(out, out1.squeeze(1), rtol=0, atol=0, name="output")
    for a, e in zip(*(((s,) if torch.is_tensor(s) else s) for s in (state, state1))):
        assert_close(a, e.squeeze(1), rtol=0, atol=0, name="state")


@pytest.mark.parametrize("cls", ("LSTM", "GRU"))
def test_zoneout_zero_is_torch(backend, cls):
    """zoneout=0 is the drop-in module itself: torch.nn's results on the same weights."""
    ours = getattr(fused_rnn, cls)(I, H, num_layers=2, zoneout=0.0, dtype=torch.float64)
    theirs = getattr(torch.nn, cls)(I, H, num_layers=2, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = randn(T, B, I, dtype=torch.float64)
    rtol, atol = tolerance(backend, torch.float64)
    a, b = ours(x), theirs(x)
    assert_close(a[0], b[0], rtol=rtol, atol=atol, name="output")
    assert repr(ours) == repr(theirs)


def test_zoneout_module_state_dict_is_torch_and_repr_shows_it():
    m = fused_rnn.LSTM(I, H, zoneout=0.1)
    t = torch.nn.LSTM(I, H)
    assert list(m.state_dict()) == list(t.state_dict())
    t.load_state_dict(m.state_dict())
    assert "zoneout=0.1" in repr(m)
    assert "zoneout" in repr(fused_rnn.GRU(I, H, zoneout=0.5))


@pytest.mark.parametrize("cls", ("LayerNormLSTM", "LayerNormGRU"))
def test_initialisation_and_state_dict_round_trip(cls):
    torch.manual_seed(0)
    m = getattr(fused_rnn, cls)(I, H, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    t = getattr(torch.nn, cls.replace("LayerNorm", ""))(I, H, num_layers=2, bidirectional=True)
    sd = m.state_dict()
    for k, v in t.state_dict().items():
        assert torch.equal(sd[k], v), f"{k}: initialised unlike torch.nn"
    lstm = cls == "LayerNormLSTM"
    norms = ["layer_norm_ih", "layer_norm_hh"] + (["layer_norm_c_weight", "layer_norm_c_bias"]
                                                  if lstm else [])
    G = 4 if lstm else 3
    for sfx in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        for n in norms:
            p = sd[n + sfx]
            assert p.shape == ((G * H,) if n in ("layer_norm_ih", "layer_norm_hh") else (H,))
            assert torch.equal(p, torch.zeros_like(p) if n.endswith("c_bias") else torch.ones_like(p))
    assert set(sd) == set(t.state_dict()) | {n + s for n in norms
                                             for s in ("_l0", "_l0_reverse", "_l1", "_l1_reverse")}
    _perturb_norms(m)
    m2 = getattr(fused_rnn, cls)(I, H, num_layers=2, bidirectional=True)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(T, B, I)
    assert torch.equal(m.eval()(x)[0], m2.eval()(x)[0])


@pytest.mark.parametrize("mode,ln,zo", [(LSTM, True, True), (GRU, True, False), (LSTM, False, True)])
def test_layer_function_backward_matches_reference(vbackend, mode, ln, zo):
    """One layer through the backend's Function (reverse, lengths): outputs and every
    gradient against autograd through the reference forward."""
    rtol, atol = tolerance(vbackend, torch.float64)
    x, h0, c0, w, lengths, kh, kc = make_args(mode, ln, True, zo, True)
    ops = backends.get_backend(vbackend).ops("variants")
    got = [t for t in variant_layer(ops, mode, True, x, h0, c0, w, lengths, kh, kc) if t is not None]
    want = [t for t in reference._fwd(mode, True, x, h0, c0, w, lengths, kh, kc,
                                      need_saved=False)[:3] if t is not None]
    ups = [torch.randn_like(t) for t in want]
    leaves = [t for t in (x, h0, c0, *w) if t is not None]
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"output {i}")
    g_got = torch.autograd.grad(sum((a * u).sum() for a, u in zip(got, ups)), leaves)
    g_want = torch.autograd.grad(sum((a * u).sum() for a, u in zip(want, ups)), leaves)
    for i, (a, e) in enumerate(zip(g_got, g_want)):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad {i}")


@pytest.mark.parametrize("make,match", [
    (lambda: fused_rnn.LayerNormLSTM(I, H, proj_size=2), "proj_size"),
    (lambda: fused_rnn.LayerNormGRU(I, H, zoneout=1.0), "zoneout"),
    (lambda: fused_rnn.LayerNormLSTM(I, H, zoneout=-0.1), "zoneout"),
    (lambda: fused_rnn.LSTM(I, H, zoneout=1.5), "zoneout"),
    (lambda: fused_rnn.GRU(I, H, zoneout="0.1"), "zoneout"),
    (lambda: fused_rnn.LSTM(I, H, proj_size=2, zoneout=0.1), "zoneout.*proj_size"),
], ids=["ln-proj", "ln-p1", "ln-neg", "lstm-p", "gru-str", "lstm-proj"])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_call_arguments():
    m = fused_rnn.LayerNormLSTM(I, H)
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(T, B, I + 1))
    with pytest.raises(ValueError, match="h_0"):
        m(torch.randn(T, B, I), (torch.randn(1, B + 1, H), torch.randn(1, B, H)))
    w = _weights(m, 0, "")
    with pytest.raises(ValueError, match="ln_c_bias must be given"):
        variant_recurrence(LSTM, torch.randn(T, B, I), None, [[w._replace(ln_c_bias=None)]])
    with pytest.raises(ValueError, match=r"ln_hh must have shape \(24,\)"):
        variant_recurrence(LSTM, torch.randn(T, B, I), None, [[w._replace(ln_hh=torch.ones(3))]])
    with pytest.raises(ValueError, match="zoneout"):
        variant_recurrence(LSTM, torch.randn(T, B, I), None, [[w]], zoneout=1.0)


@pytest.mark.parametrize("cls", ("LayerNormLSTM", "LayerNormGRU"))
def test_autocast_returns_torch_nn_dtype(cls):
    """CPU bf16 autocast: computed in bf16 storage and returned in the dtype torch.nn's LSTM
    (bf16) or GRU (fp32) returns; close to the fp32 result."""
    m = getattr(fused_rnn, cls)(I, H, zoneout=0.2).eval()
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)[0]
        want_dtype = getattr(torch.nn, cls.replace("LayerNorm", ""))(I, H)(x)[0].dtype
    assert out.dtype == want_dtype
    assert_close(out.float(), m(x)[0], rtol=5e-2, atol=5e-2, name="output")


def _perturb_norms(m):
    """Gains and shifts away from 1 and 0, so that a gain applied wrongly shows."""
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("layer_norm_"):
                p.add_(0.3 * torch.randn_like(p))
