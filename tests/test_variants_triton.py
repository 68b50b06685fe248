"""The variant recurrences' triton backend (``ops/variants/triton.py``) against the
equations of ``ops/variants/layout.py``: outputs, final states and every gradient, over
LSTM/GRU x layer norm x zoneout x lengths x reverse, in fp64 (exact) and fp32.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET), so the
shapes are small; one test takes several row and unit tiles with ragged edges. Buffers
from torch.empty are NaN here (deterministic mode fills them), so a value the kernels
forget to write fails the comparison.
"""

import pytest
import torch
import torch.nn.functional as F

from fused_rnn import backends
from fused_rnn.ops.recurrence import reference as rec_reference
from fused_rnn.ops.recurrence.cells import GATES, GRU, LSTM
from fused_rnn.ops.variants.layout import LN_EPS, VariantWeights, draw_keeps
from fused_rnn.testing import assert_close, randn, random_lengths, tolerance

pytestmark = pytest.mark.skipif("triton" not in backends.available_backends(),
                                reason=f"triton backend: {backends.backend_report()['triton']}")

FP64 = (1e-10, 1e-12)  # the same sums in the same precision: only rounding order differs


@pytest.fixture(autouse=True)
def _nan_filled_empty():
    torch.use_deterministic_algorithms(True)  # torch.empty -> NaN
    yield
    torch.use_deterministic_algorithms(False)


def _ops():
    return backends.get_backend("triton").ops("variants")


def _plain(mode, reverse, x, h0, c0, w: VariantWeights, lengths, keep_h, keep_c):
    """layout.py's equations step by step in differentiable PyTorch (the oracle)."""
    T = x.shape[0]
    if reverse:
        index = rec_reference._reverse_index(x, lengths)
        x, keep_h, keep_c = (None if t is None else rec_reference._gather_time(t, index)
                             for t in (x, keep_h, keep_c))
    active = rec_reference._active(x, lengths)
    bias = lambda b: 0 if b is None else b  # noqa: E731
    ln = lambda v: F.layer_norm(v, v.shape[-1:], eps=LN_EPS)  # noqa: E731
    h, c, ys = h0, c0, []
    for t in range(T):
        gx, gh = x[t] @ w.w_ih.t(), h @ w.w_hh.t()
        if w.layer_norm:
            ai, ah = w.ln_ih * ln(gx) + bias(w.b_ih), w.ln_hh * ln(gh) + bias(w.b_hh)
        else:
            ai, ah = gx + bias(w.b_ih), gh + bias(w.b_hh)
        c_new = None
        if mode == LSTM:
            i, f, g, o = (ai + ah).chunk(4, 1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c_tilde = f * c + i * g
            if w.layer_norm:
                h_tilde = o * torch.tanh(w.ln_c_weight * ln(c_tilde) + w.ln_c_bias)
            else:
                h_tilde = o * c_tilde.tanh()
            c_new = c_tilde if keep_c is None else keep_c[t] * c + (1 - keep_c[t]) * c_tilde
        else:
            (ir, iz, in_), (hr, hz, hn) = ai.chunk(3, 1), ah.chunk(3, 1)
            r, z = (ir + hr).sigmoid(), (iz + hz).sigmoid()
            n = (in_ + r * hn).tanh()
            h_tilde = (1 - z) * n + z * h
        h_new = h_tilde if keep_h is None else keep_h[t] * h + (1 - keep_h[t]) * h_tilde
        if active is not None:
            h_new = torch.where(active[t], h_new, h)
            c_new = None if c is None else torch.where(active[t], c_new, c)
            ys.append(torch.where(active[t], h_new, torch.zeros_like(h_new)))
        else:
            ys.append(h_new)
        h, c = h_new, c_new
    y = torch.stack(ys)
    return (rec_reference._gather_time(y, index) if reverse else y), h, c


def make_args(mode, layer_norm, zoneout, lengths, dtype, T=5, B=3, I=4, H=6):
    """Leaves requiring grad; zoneout: None, "train" (Bernoulli masks) or "eval" (p)."""
    G = GATES[mode]
    mk = lambda *s, scale=0.5: randn(*s, dtype=dtype, requires_grad=True, scale=scale)  # noqa
    gain = lambda n: (1 + randn(n, dtype=dtype, scale=0.2)).requires_grad_()  # noqa: E731
    x = mk(T, B, I, scale=1.0)
    h0 = mk(B, H, scale=1.0)
    c0 = mk(B, H, scale=1.0) if mode == LSTM else None
    lstm_ln = layer_norm and mode == LSTM
    w = VariantWeights(mk(G * H, I), mk(G * H, H), mk(G * H), mk(G * H),
                       gain(G * H) if layer_norm else None, gain(G * H) if layer_norm else None,
                       gain(H) if lstm_ln else None, mk(H, scale=0.2) if lstm_ln else None)
    keep_h, keep_c = draw_keeps(0.0 if zoneout is None else 0.3, zoneout == "train", (T, B, H),
                                mode == LSTM, x.detach())
    lens = random_lengths(B, T) if lengths else None
    return x, h0, c0, w, lens, keep_h, keep_c


def check_against_plain(mode, reverse, layer_norm, zoneout, lengths, dtype, tol, **sizes):
    x, h0, c0, w, lens, keep_h, keep_c = make_args(mode, layer_norm, zoneout, lengths, dtype,
                                                   **sizes)
    ops = _ops()
    y, h_n, c_n, saved = ops._fwd(mode, reverse, x.detach(), h0.detach(),
                                  None if c0 is None else c0.detach(), w, lens, keep_h, keep_c)
    wide = lambda t: None if t is None else t.double()  # noqa: E731 (an fp64 oracle)
    want = _plain(mode, reverse, wide(x), wide(h0), wide(c0),
                  VariantWeights(*(wide(p) for p in w)), lens, wide(keep_h), wide(keep_c))
    rtol, atol = tol
    for name, a, e in zip(("y", "h_n", "c_n"), (y, h_n, c_n), want):
        assert_close(a, None if e is None else e.detach(), rtol=rtol, atol=atol, name=name)

    ups = [torch.randn_like(t) for t in (y, h_n)] + ([torch.randn_like(c_n)] if mode == LSTM
                                                      else [None])
    dx, dh0, dc0, dw = ops._bwd(mode, reverse, x.detach(), h0.detach(),
                                None if c0 is None else c0.detach(), w, lens, keep_h, keep_c,
                                saved, *ups)
    leaves = [("x", x, dx), ("h0", h0, dh0), ("c0", c0, dc0)] + [
        (f"w.{n}", p, g) for n, p, g in zip(w._fields, w, dw)]
    leaves = [(n, p, g) for n, p, g in leaves if p is not None or g is not None]
    outs = [(o, u) for o, u in zip(want, ups) if o is not None]
    expect = torch.autograd.grad([o for o, _ in outs], [p for _, p, _ in leaves],
                                 [u for _, u in outs])
    for (name, _, got), e in zip(leaves, expect):
        assert_close(got, e, rtol=rtol, atol=atol, name=f"grad {name}")


ZONEOUT = [None, "train"]
LENGTHS_REVERSE = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize("lengths,reverse", LENGTHS_REVERSE,
                         ids=[f"len{int(a)}-rev{int(b)}" for a, b in LENGTHS_REVERSE])
@pytest.mark.parametrize("zoneout", ZONEOUT, ids=["nozo", "zo"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["noln", "ln"])
@pytest.mark.parametrize("mode", [LSTM, GRU])
def test_fp64_matches_the_equations(mode, layer_norm, zoneout, lengths, reverse):
    check_against_plain(mode, reverse, layer_norm, zoneout, lengths, torch.float64, FP64)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["noln", "ln"])
@pytest.mark.parametrize("mode", [LSTM, GRU])
def test_fp32_matches_the_equations(mode, layer_norm):
    check_against_plain(mode, True, layer_norm, "train", True, torch.float32,
                        tolerance("triton", torch.float32))


@pytest.mark.parametrize("mode", [LSTM, GRU])
def test_evaluation_keeps(mode):
    """Zoneout in evaluation: keep = p everywhere, not a 0/1 mask."""
    check_against_plain(mode, False, True, "eval", True, torch.float64, FP64)


@pytest.mark.parametrize("mode", [LSTM, GRU])
def test_several_row_and_unit_tiles_with_ragged_edges(mode):
    """B and G*H above one tile (16 rows, 16 units in fp32) and not multiples of it: the
    layer norms' row statistics gather over several unit tiles, masks on every edge."""
    check_against_plain(mode, True, True, "train", True, torch.float32,
                        tolerance("triton", torch.float32), T=3, B=19, I=5, H=21)


@pytest.mark.parametrize("mode", [LSTM, GRU])
def test_inference_forward_matches_the_saving_one(mode):
    x, h0, c0, w, lens, keep_h, keep_c = make_args(mode, True, "train", True, torch.float64)
    args = (mode, True, x.detach(), h0.detach(), None if c0 is None else c0.detach(), w, lens,
            keep_h, keep_c)
    y, h_n, c_n, saved = _ops()._fwd(*args, need_saved=False)
    assert saved == ()
    for name, a, e in zip(("y", "h_n", "c_n"), (y, h_n, c_n), _ops()._fwd(*args)[:3]):
        assert_close(a, e, rtol=0, atol=0, name=name)


def test_the_triton_backend_runs_variants_and_refuses_bf16_on_cpu():
    backend = backends.get_backend("triton")
    assert backend.ops("variants") is _ops()
    call = backends.OpCall("variants", torch.device("cpu"), torch.bfloat16, {})
    assert any("bf16" in r for r in backend.not_supported_reasons(call))
