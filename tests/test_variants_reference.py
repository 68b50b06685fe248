"""The variant recurrences' reference (LayerNorm LSTM/GRU, zoneout) against an implementation
written here from the papers' equations: forward outputs, and the explicit backward against
autograd through that implementation; gradcheck of the reference forward in float64."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from fused_rnn.ops.recurrence.cells import GRU, LSTM
from fused_rnn.ops.variants import reference
from fused_rnn.ops.variants.layout import LN_EPS, VariantWeights, draw_keeps
from fused_rnn.testing import assert_close, randn, tolerance

T, B, I, H = 6, 3, 5, 7


def _ln(v, gain, shift=None):
    return F.layer_norm(v, (v.shape[-1],), gain, shift, LN_EPS)


def paper_step(mode, x, h, c, w: VariantWeights, keep_h, keep_c):
    """One step for rows ``x [N, I]``: Ba et al. 2016 (LN-LSTM, h~ = o tanh(LN(c~))), the
    LN-GRU of layout.py, torch.nn's cells without layer norm; Krueger et al. 2016 zoneout."""
    H = w.w_hh.shape[1]
    if w.ln_ih is not None:
        gi = _ln(x @ w.w_ih.t(), w.ln_ih) + (0 if w.b_ih is None else w.b_ih)
        gh = _ln(h @ w.w_hh.t(), w.ln_hh) + (0 if w.b_hh is None else w.b_hh)
    else:
        gi = x @ w.w_ih.t() + (0 if w.b_ih is None else w.b_ih)
        gh = h @ w.w_hh.t() + (0 if w.b_hh is None else w.b_hh)
    if mode == LSTM:
        a = gi + gh
        i, f, g, o = (torch.sigmoid(a[:, :H]), torch.sigmoid(a[:, H:2 * H]),
                      torch.tanh(a[:, 2 * H:3 * H]), torch.sigmoid(a[:, 3 * H:]))
        c_tilde = f * c + i * g
        cn = _ln(c_tilde, w.ln_c_weight, w.ln_c_bias) if w.ln_ih is not None else c_tilde
        h_tilde = o * torch.tanh(cn)
        c_new = c_tilde if keep_c is None else keep_c * c + (1 - keep_c) * c_tilde
    else:
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h_tilde = (1 - z) * n + z * h
        c_new = None
    h_new = h_tilde if keep_h is None else keep_h * h + (1 - keep_h) * h_tilde
    return h_new, c_new


def paper_layer(mode, reverse, x, h0, c0, w, lengths, keep_h, keep_c):
    """One layer and direction, one row at a time: row b visits its steps 0..L_b-1 (or
    L_b-1..0 when ``reverse``) with the keeps of those time positions; zeros past L_b."""
    steps = x.shape[0]
    ys, hn, cn = [], [], []
    for b in range(x.shape[1]):
        L = steps if lengths is None else int(lengths[b])
        h, c = h0[b:b + 1], None if c0 is None else c0[b:b + 1]
        out = [None] * steps
        for t in (reversed(range(L)) if reverse else range(L)):
            h, c = paper_step(mode, x[t, b:b + 1], h, c, w,
                              None if keep_h is None else keep_h[t, b:b + 1],
                              None if keep_c is None else keep_c[t, b:b + 1])
            out[t] = h
        out = [o if o is not None else torch.zeros_like(h) for o in out]
        ys.append(torch.cat(out))
        hn.append(h)
        cn.append(c)
    return (torch.stack(ys, 1), torch.cat(hn), None if c0 is None else torch.cat(cn))


def make_args(mode, layer_norm, bias, zoneout, lengths, dtype=torch.float64):
    """Leaves requiring grad (x, h0, c0, weights), lengths, keeps (fractional: the launchers
    take any coefficient in [0, 1], masks and expectations alike)."""
    G = 4 if mode == LSTM else 3
    mk = lambda *s, scale=0.5: randn(*s, dtype=dtype, requires_grad=True, scale=scale)  # noqa: E731
    x, h0 = mk(T, B, I, scale=1.0), mk(B, H, scale=1.0)
    c0 = mk(B, H, scale=1.0) if mode == LSTM else None
    ln = layer_norm
    gain = lambda n: (1 + 0.3 * torch.randn(n, dtype=dtype)).requires_grad_()  # noqa: E731
    w = VariantWeights(
        mk(G * H, I), mk(G * H, H), mk(G * H) if bias else None, mk(G * H) if bias else None,
        gain(G * H) if ln else None, gain(G * H) if ln else None,
        gain(H) if ln and mode == LSTM else None, mk(H) if ln and mode == LSTM else None)
    lens = torch.tensor([T, 2, 5]) if lengths else None
    keep_h = torch.rand(T, B, H, dtype=dtype) if zoneout else None
    keep_c = torch.rand(T, B, H, dtype=dtype) if zoneout and mode == LSTM else None
    return x, h0, c0, w, lens, keep_h, keep_c


def _leaves(x, h0, c0, w):
    return [t for t in (x, h0, c0, *w) if t is not None]


def _names(c0, w):
    return ["dx", "dh0"] + (["dc0"] if c0 is not None else []) + [
        f"d{f}" for f, t in zip(VariantWeights._fields, w) if t is not None]


CASES = [
    pytest.param(mode, ln, zo, rev, lens, bias,
                 id=f"{mode}-{'ln' if ln else 'noln'}-{'zo' if zo else 'nozo'}-"
                    f"{'rev' if rev else 'fwd'}-{'len' if lens else 'full'}-{'bias' if bias else 'nobias'}")
    for mode, ln, zo, rev, lens, bias in itertools.product(
        (LSTM, GRU), (True, False), (True, False), (False, True), (False, True), (True, False))
]


@pytest.mark.parametrize("mode,ln,zo,rev,lens,bias", CASES)
def test_reference_matches_paper_forward_and_backward(mode, ln, zo, rev, lens, bias):
    rtol, atol = tolerance("reference", torch.float64)
    x, h0, c0, w, lengths, kh, kc = make_args(mode, ln, bias, zo, lens)
    want = paper_layer(mode, rev, x, h0, c0, w, lengths, kh, kc)
    with torch.no_grad():
        y, h_n, c_n, saved = reference._fwd(mode, rev, x, h0, c0, w, lengths, kh, kc)
    got = (y, h_n, c_n)
    for n, a, e in zip(("y", "h_n", "c_n"), got, want):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
    shapes = [tuple(t.shape) for t in reference.saved_like(mode, rev, x, h0, c0, w, lengths, kh, kc)]
    assert [tuple(t.shape) for t in saved] == shapes
    ups = [torch.randn_like(t) for t in want if t is not None]
    leaves = _leaves(x, h0, c0, w)
    expected = torch.autograd.grad(sum((o * u).sum() for o, u in zip(want, ups)), leaves)
    dx, dh0, dc0, dw = reference._bwd(mode, rev, x.detach(), h0.detach(),
                                      None if c0 is None else c0.detach(),
                                      VariantWeights(*(None if t is None else t.detach() for t in w)),
                                      lengths, kh, kc, saved, *ups, *([None] if c0 is None else []))
    actual = [t for t in (dx, dh0, dc0, *dw) if t is not None]
    assert len(actual) == len(expected)
    for n, a, e in zip(_names(c0, w), actual, expected):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


@pytest.mark.parametrize("mode", (LSTM, GRU))
def test_backward_of_the_output_only(mode):
    """dh_n and dc_n None: the loop starts from zeros."""
    x, h0, c0, w, lengths, kh, kc = make_args(mode, True, True, True, True)
    want = paper_layer(mode, True, x, h0, c0, w, lengths, kh, kc)
    with torch.no_grad():
        saved = reference._fwd(mode, True, x, h0, c0, w, lengths, kh, kc)[3]
    up = torch.randn_like(want[0])
    expected = torch.autograd.grad((want[0] * up).sum(), _leaves(x, h0, c0, w))
    grads = reference._bwd(mode, True, x, h0, c0, w, lengths, kh, kc, saved, up, None, None)
    actual = [t for t in (*grads[:3], *grads[3]) if t is not None]
    for n, a, e in zip(_names(c0, w), actual, expected):
        assert_close(a, e, rtol=1e-7, atol=1e-9, name=n)


@pytest.mark.parametrize("mode", (LSTM, GRU))
@pytest.mark.parametrize("zo", (True, False), ids=("zo", "nozo"))
def test_gradcheck_reference_forward_float64(mode, zo):
    x, h0, c0, w, lengths, kh, kc = make_args(mode, True, True, zo, True)

    def f(*leaves):
        it = iter(leaves)
        xx, hh = next(it), next(it)
        cc = next(it) if c0 is not None else None
        ww = VariantWeights(*(None if t is None else next(it) for t in w))
        y, h, c, _ = reference._fwd(mode, True, xx, hh, cc, ww, lengths, kh, kc, need_saved=False)
        return (y, h) if c is None else (y, h, c)

    assert torch.autograd.gradcheck(f, tuple(_leaves(x, h0, c0, w)), fast_mode=True)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bf16", "fp16"))
@pytest.mark.parametrize("mode", (LSTM, GRU))
def test_half_dtypes_computed_in_fp32(mode, dtype):
    rtol, atol = tolerance("reference", dtype)
    x, h0, c0, w, lengths, kh, kc = make_args(mode, True, True, True, True)
    half = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
    args = [half(x), half(h0), half(c0), VariantWeights(*map(half, w)), lengths, half(kh), half(kc)]
    # The oracle: fp64 on the very values the half call sees.
    dbl = lambda t: None if t is None else t.double().requires_grad_()  # noqa: E731
    want_args = [dbl(args[0]), dbl(args[1]), dbl(args[2]), VariantWeights(*map(dbl, args[3]))]
    want = paper_layer(mode, False, *want_args, lengths,
                       *(None if k is None else k.double() for k in args[5:]))
    y, h_n, c_n, saved = reference._fwd(mode, False, *args)
    assert y.dtype == dtype and all(s.dtype == dtype for s in saved)
    for n, a, e in zip(("y", "h_n", "c_n"), (y, h_n, c_n), want):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
    ups = [torch.randn_like(t).to(dtype) for t in want if t is not None]
    grads = reference._bwd(mode, False, *args, saved, *ups, *([None] if c_n is None else []))
    leaves = [t for t in (*want_args[:3], *want_args[3]) if t is not None]
    expected = torch.autograd.grad(sum((o * u.double()).sum() for o, u in zip(want, ups)), leaves)
    actual = [t for t in (*grads[:3], *grads[3]) if t is not None]
    for n, a, e in zip(_names(c0, w), actual, expected):
        assert a.dtype == dtype, n
        scale = e.abs().max().item()  # weight gradients sum over all steps and rows
        assert_close(a, e, rtol=rtol, atol=atol * max(1.0, scale), name=n)


def test_keeps_of_one_are_the_identity_and_draws_follow_the_seed():
    """keep = 1 everywhere: every unit keeps its previous value (y = h0 at every step)."""
    x, h0, c0, w, _, _, _ = make_args(LSTM, True, True, False, False)
    ones = torch.ones(T, B, H, dtype=x.dtype)
    y, h_n, c_n, _ = reference._fwd(LSTM, False, x, h0, c0, w, None, ones, ones)
    assert_close(y, h0.expand(T, B, H), rtol=0, atol=0, name="y")
    assert_close(c_n, c0, rtol=0, atol=0, name="c_n")
    torch.manual_seed(7)
    a = draw_keeps(0.3, True, (T, B, H), True, x)
    torch.manual_seed(7)
    b = draw_keeps(0.3, True, (T, B, H), True, x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[0].unique().tolist()) <= {0.0, 1.0}


def test_bad_mode_names_the_argument():
    x, h0, c0, w, _, _, _ = make_args(LSTM, True, True, False, False)
    with pytest.raises(ValueError, match="mode"):
        reference._fwd("RNN_TANH", False, x, h0, c0, w, None, None, None)
