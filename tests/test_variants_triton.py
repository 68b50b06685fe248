"""The variant recurrences' triton backend (``ops/variants/triton.py``) against the
reference's ``_fwd``/``_bwd``: outputs, final states and every gradient, over
LSTM/GRU x layer norm x zoneout x reverse x lengths x bias in fp64 (the reference's own
grid, tests/test_variants_reference.py), then fp32 and fp16 against fp64, several tiles
with ragged edges, inference, and the whole stack through the functional entry.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET), so the
shapes are small. Buffers from torch.empty are NaN here (deterministic mode fills them),
so a value the kernels forget to write fails the comparison.
"""

import pytest
import torch

import fused_rnn
from fused_rnn import backends
from fused_rnn.ops.recurrence.cells import GATES, GRU, LSTM
from fused_rnn.ops.variants import reference
from fused_rnn.ops.variants.function import variant_recurrence
from fused_rnn.ops.variants.layout import VariantWeights
from fused_rnn.testing import assert_close, randn, random_lengths, tolerance

from test_variants_reference import CASES, _leaves, _names, make_args

pytestmark = pytest.mark.skipif("triton" not in backends.available_backends(),
                                reason=f"triton backend: {backends.backend_report()['triton']}")


@pytest.fixture(autouse=True)
def _nan_filled_empty():
    torch.use_deterministic_algorithms(True)  # torch.empty -> NaN
    yield
    torch.use_deterministic_algorithms(False)


def _ops():
    return backends.get_backend("triton").ops("variants")


def _detached(x, h0, c0, w):
    d = lambda t: None if t is None else t.detach()  # noqa: E731
    return d(x), d(h0), d(c0), VariantWeights(*map(d, w))


def _wide(*tensors):
    return tuple(None if t is None else t.double() for t in tensors)


def check_against_reference(mode, reverse, args, dtype, dh_n=True):
    """Triton on ``args`` cast to ``dtype`` against the reference in fp64 on the very
    values the triton call sees, forward and explicit backward, same upstream gradients."""
    x, h0, c0, w, lengths, keep_h, keep_c = args
    cast = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
    mine = (cast(x), cast(h0), cast(c0), VariantWeights(*map(cast, w)), lengths, cast(keep_h),
            cast(keep_c))
    theirs = (*_wide(*mine[:3]), VariantWeights(*_wide(*mine[3])), lengths,
              *_wide(*mine[5:]))
    rtol, atol = tolerance("triton", dtype)
    y, h_n, c_n, saved = _ops()._fwd(mode, reverse, *mine)
    like = _ops().saved_like(mode, reverse, *mine)
    assert [(t.shape, t.dtype) for t in saved] == [(t.shape, t.dtype) for t in like]
    want_y, want_h, want_c, want_saved = reference._fwd(mode, reverse, *theirs)
    for name, a, e in zip(("y", "h_n", "c_n"), (y, h_n, c_n), (want_y, want_h, want_c)):
        assert_close(a, e, rtol=rtol, atol=atol, name=name)
        assert a is None or a.dtype == dtype, f"{name}: dtype {a.dtype}"

    ups = [randn(*y.shape, dtype=torch.float64), randn(*h_n.shape, dtype=torch.float64)
           if dh_n else None, randn(*h_n.shape, dtype=torch.float64)
           if dh_n and mode == LSTM else None]
    got = _ops()._bwd(mode, reverse, *mine, saved, *(cast(u) for u in ups))
    want = reference._bwd(mode, reverse, *theirs, want_saved, *ups)
    actual = [t for t in (*got[:3], *got[3]) if t is not None]
    expected = [t for t in (*want[:3], *want[3]) if t is not None]
    assert len(actual) == len(expected)
    for name, a, e in zip(_names(c0, w), actual, expected):
        assert_close(a, e, rtol=rtol, atol=atol, name=name)
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}"


@pytest.mark.parametrize("mode,ln,zo,rev,lens,bias", CASES)
def test_fp64_matches_the_reference(mode, ln, zo, rev, lens, bias):
    check_against_reference(mode, rev, make_args(mode, ln, bias, zo, lens), torch.float64)


@pytest.mark.parametrize("ln", (True, False), ids=("ln", "noln"))
@pytest.mark.parametrize("mode", (LSTM, GRU))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=("fp32", "fp16"))
def test_single_and_half_precision(dtype, mode, ln):
    """fp32 and fp16 (fp32 arithmetic, the state kept in fp32) within the backend's
    tolerance of fp64. bf16 runs on CUDA only (the backend refuses it on CPU)."""
    check_against_reference(mode, True, make_args(mode, ln, True, True, True), dtype)


@pytest.mark.parametrize("mode", (LSTM, GRU))
def test_backward_of_the_output_only(mode):
    """dh_n and dc_n None: the loop starts from zero gradients."""
    check_against_reference(mode, True, make_args(mode, True, True, True, True),
                            torch.float64, dh_n=False)


@pytest.mark.parametrize("mode", (LSTM, GRU))
def test_directional_derivative_matches_finite_differences(mode):
    """The kernels' backward against central differences of their own forward along one
    random direction of every input at once (fp64; torch's gradcheck, even in fast mode,
    reruns the full Jacobian on failure: too many interpreted calls)."""
    x, h0, c0, w, lengths, kh, kc = make_args(mode, True, True, True, True)
    args = list(_detached(x, h0, c0, w))
    leaves = [t for t in (args[0], args[1], args[2], *args[3]) if t is not None]
    ups = None

    def loss(ts):
        it = iter(ts)
        xx, hh = next(it), next(it)
        cc = next(it) if c0 is not None else None
        ww = VariantWeights(*(None if t is None else next(it) for t in args[3]))
        out = [o for o in _ops()._fwd(mode, True, xx, hh, cc, ww, lengths, kh, kc)[:3]
               if o is not None]
        return out, sum((o * u).sum() for o, u in zip(out, ups)) if ups else None

    out, _ = loss(leaves)
    ups = [torch.randn_like(o) for o in out]
    direction = [torch.randn_like(t) for t in leaves]
    eps = 1e-6
    plus = loss([t + eps * d for t, d in zip(leaves, direction)])[1]
    minus = loss([t - eps * d for t, d in zip(leaves, direction)])[1]
    numeric = (plus - minus) / (2 * eps)
    saved = _ops()._fwd(mode, True, *args, lengths, kh, kc)[3]
    dx, dh0, dc0, dw = _ops()._bwd(mode, True, *args, lengths, kh, kc, saved, *ups,
                                   *([None] if c0 is None else []))
    grads = [t for t in (dx, dh0, dc0, *dw) if t is not None]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    assert_close(analytic, numeric, rtol=1e-6, atol=1e-8, name="<grad, direction>")


@pytest.mark.parametrize("mode", (LSTM, GRU))
def test_several_row_and_unit_tiles_with_ragged_edges(mode):
    """B and H above one tile (16 rows, 16 units in fp32) and not multiples of it: the
    layer norms' row statistics gather over several unit tiles, masks on every edge."""
    T, B, I, H = 3, 19, 5, 21
    G = GATES[mode]
    mk = lambda *s, scale=0.5: randn(*s, scale=scale)  # noqa: E731
    gain = lambda n: 1 + mk(n, scale=0.3)  # noqa: E731
    w = VariantWeights(mk(G * H, I), mk(G * H, H), mk(G * H), mk(G * H), gain(G * H),
                       gain(G * H), gain(H) if mode == LSTM else None,
                       mk(H) if mode == LSTM else None)
    keep = lambda: torch.rand(T, B, H)  # noqa: E731
    args = (mk(T, B, I, scale=1.0), mk(B, H, scale=1.0),
            mk(B, H, scale=1.0) if mode == LSTM else None, w, random_lengths(B, T), keep(),
            keep() if mode == LSTM else None)
    check_against_reference(mode, True, args, torch.float32)


@pytest.mark.parametrize("mode", (LSTM, GRU))
def test_inference_forward_matches_the_saving_one(mode):
    x, h0, c0, w, lengths, kh, kc = make_args(mode, True, True, True, True)
    args = (mode, True, *_detached(x, h0, c0, w), lengths, kh, kc)
    y, h_n, c_n, saved = _ops()._fwd(*args, need_saved=False)
    assert saved == ()
    for name, a, e in zip(("y", "h_n", "c_n"), (y, h_n, c_n), _ops()._fwd(*args)[:3]):
        assert_close(a, e, rtol=0, atol=0, name=name)


@pytest.mark.parametrize("mode", (LSTM, GRU))
def test_stacked_bidirectional_training_matches_the_reference_backend(mode):
    """Two layers, both directions, zoneout masks drawn under one seed, through the
    functional entry and the autograd Function."""
    T, B, I, H = 4, 3, 5, 6
    G = GATES[mode]
    mk = lambda *s: randn(*s, dtype=torch.float64, requires_grad=True, scale=0.4)  # noqa
    gain = lambda n: (1 + randn(n, dtype=torch.float64, scale=0.2)).requires_grad_()  # noqa
    layers = [[VariantWeights(mk(G * H, I if li == 0 else 2 * H), mk(G * H, H), mk(G * H),
                              mk(G * H), gain(G * H), gain(G * H),
                              gain(H) if mode == LSTM else None, mk(H) if mode == LSTM else None)
               for _ in range(2)] for li in range(2)]
    x = mk(T, B, I)
    lengths = torch.tensor([4, 2, 3])
    results = {}
    for name in ("triton", "reference"):
        torch.manual_seed(5)
        with fused_rnn.use_backend(name):
            out = variant_recurrence(mode, x, None, layers, training=True, lengths=lengths,
                                     zoneout=0.25)
        outs = [o for o in out if o is not None]
        leaves = [x] + [t for dirs in layers for w in dirs for t in w if t is not None]
        ups = [torch.ones_like(o) * (i + 1) for i, o in enumerate(outs)]
        results[name] = outs + list(torch.autograd.grad(outs, leaves, ups))
    rtol, atol = tolerance("triton", torch.float64)
    for i, (a, e) in enumerate(zip(results["triton"], results["reference"])):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"output or gradient {i}")


def test_an_empty_batch_goes_to_the_reference():
    x, h0, c0, w, _, kh, kc = make_args(LSTM, True, True, True, False)
    x, h0, c0, w = _detached(x[:, :0], h0[:0], c0[:0], w)
    y, h_n, c_n, _ = _ops()._fwd(LSTM, False, x, h0, c0, w, None, kh[:, :0], kc[:, :0])
    assert y.shape == (x.shape[0], 0, h0.shape[1]) and h_n.shape == c_n.shape == h0.shape


def test_the_triton_backend_runs_variants_and_refuses_bf16_on_cpu():
    backend = backends.get_backend("triton")
    assert backend.ops("variants") is _ops()
    call = backends.OpCall("variants", torch.device("cpu"), torch.bfloat16, {})
    assert any("bf16" in r for r in backend.not_supported_reasons(call))
