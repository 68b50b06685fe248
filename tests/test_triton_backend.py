"""The triton backend's own concerns: both kernel kinds (whole-sequence and per-step) on
every case of the per-layer grid, tiles that do not divide the sizes, and gradcheck.

The shared grid runs the launcher's default, which at test sizes is the whole-sequence
kernel; here each kind is forced in turn. On CPU the kernels run in Triton's interpreter
(~0.1 s per layer call), too slow for the exhaustive gradcheck of every case (~1000 calls
each), so gradcheck here is torch's fast mode (one random direction per input); the exact
float64 comparison with autograd runs on every case in both kinds.
"""

import pytest
import torch

from fused_rnn import backends
from fused_rnn.ops.recurrence import reference
from fused_rnn.ops.recurrence.cells import GATES, LSTM, LayerWeights
from fused_rnn.ops.recurrence.function import recurrence_layer
from fused_rnn.testing import assert_close, randn, random_lengths, tolerance

import test_recurrence_function as per_layer
from test_recurrence_function import CASES, _leaves, make_args

pytestmark = pytest.mark.skipif("triton" not in backends.available_backends(),
                                reason=f"triton backend: {backends.backend_report()['triton']}")
PATHS = ["seq", "step"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Force the whole-sequence ("seq") or per-step ("step") kernels."""
    from fused_rnn.ops.recurrence import triton as launcher

    monkeypatch.setattr(launcher, "KERNEL_PATH", request.param)
    return request.param


@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", [c for c in CASES if c.values[4]])
def test_each_kernel_kind_matches_autograd(path, mode, reverse, lengths, proj, bias):
    per_layer.test_explicit_backward_matches_autograd_of_reference(
        "triton", mode, reverse, lengths, proj, bias)


@pytest.mark.parametrize("mode,reverse,lengths,proj,bias",
                         [c for c in CASES if c.values[4] and c.values[2]])  # lengths: every mask
def test_gradcheck_fast_mode(mode, reverse, lengths, proj, bias):
    x, h0, c0, w, lens = make_args(mode, lengths, proj, bias)
    ops = backends.get_backend("triton").ops("recurrence")
    n_c = 1 if c0 is not None else 0

    def f(x, h0, *rest):
        full = LayerWeights(*rest[n_c:], *([None] * (5 - len(rest[n_c:]))))
        out = recurrence_layer(ops, mode, reverse, x, h0, rest[0] if n_c else None, full, lens)
        return tuple(o for o in out if o is not None)

    assert torch.autograd.gradcheck(f, tuple(_leaves(x, h0, c0, w)), eps=1e-6, atol=1e-7,
                                     fast_mode=True)


@pytest.mark.parametrize("mode", list(GATES))
def test_several_row_and_unit_tiles_with_ragged_edges(path, mode):
    """B and H above one tile (32) and not multiples of it: masks on every edge."""
    T, B, I, H = 4, 37, 5, 35
    P = 33 if mode == LSTM else H
    dtype = torch.float32
    rtol, atol = tolerance("triton", dtype)
    G = GATES[mode]
    x = randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = randn(B, P, dtype=dtype, requires_grad=True)
    c0 = randn(B, H, dtype=dtype, requires_grad=True) if mode == LSTM else None
    mk = lambda *s: randn(*s, dtype=dtype, requires_grad=True, scale=0.3)  # noqa: E731
    w = LayerWeights(mk(G * H, I), mk(G * H, P), mk(G * H), mk(G * H),
                     mk(P, H) if mode == LSTM else None)
    lens = random_lengths(B, T)
    ops = backends.get_backend("triton").ops("recurrence")
    got = [o for o in recurrence_layer(ops, mode, True, x, h0, c0, w, lens) if o is not None]
    want = [o for o in reference._fwd(mode, True, x, h0, c0, w, lens, need_saved=False)[:3]
            if o is not None]
    for n, a, e in zip(("y", "h_n", "c_n"), got, want):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
    ups = [torch.randn_like(t) for t in got]
    leaves = _leaves(x, h0, c0, w)
    g = torch.autograd.grad(sum((o * u).sum() for o, u in zip(got, ups)), leaves)
    r = torch.autograd.grad(sum((o * u).sum() for o, u in zip(want, ups)), leaves)
    for i, (a, e) in enumerate(zip(g, r)):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad of leaf {i}")
