"""Every fused backend of the variant recurrences (LayerNorm LSTM/GRU, zoneout) against the
reference's launchers: outputs, final states and every gradient, called directly
(``_fwd``/``_bwd`` of ``layout.py``); fp64 gradcheck through the autograd Function; the
cpu backend's repeatability and its checks of bad input.

The reference runs in float64 on the same (rounded) inputs; fp64 backends are held to
1e-10, fp32 to the backend's tolerance table or to twice the reference's own fp32 error,
whichever is looser."""

import itertools

import pytest
import torch

from fused_rnn import backends, testing
from fused_rnn.ops.recurrence.cells import GRU, LSTM
from fused_rnn.ops.variants import reference
from fused_rnn.ops.recurrence.function import LayerFunction
from fused_rnn.ops.variants.layout import VariantWeights, draw_keeps

FUSED = [b for b in testing.testable_backends()
         if b != "reference" and "variants" in backends.get_backend(b).modules]
if not FUSED:
    pytest.skip("no fused backend with the 'variants' op is available here (cpu needs the "
                "compiled extension)", allow_module_level=True)

TIGHT_FP64 = (1e-10, 1e-10)
NAMES = ("dx", "dh0", "dc0") + tuple(f"d{f}" for f in VariantWeights._fields)


def _ops(backend):
    return backends.get_backend(backend).ops("variants")


def _tol(backend, dtype):
    return TIGHT_FP64 if dtype == torch.float64 else testing.tolerance(backend, dtype)


def make_case(mode, layer_norm, zoneout, ragged, *, T=6, B=3, I=5, H=13, bias=True, seed=0):
    """fp64 inputs: x, h0, c0, weights, lengths, keeps and upstream gradients. ``zoneout``:
    None, "train" (Bernoulli masks) or "eval" (p everywhere)."""
    torch.manual_seed(seed)
    G = 4 if mode == LSTM else 3
    r = lambda *s, scale=0.5: testing.randn(*s, dtype=torch.float64, scale=scale)  # noqa: E731
    gain = lambda n: 1 + 0.3 * torch.randn(n, dtype=torch.float64)  # noqa: E731
    ln = layer_norm
    w = VariantWeights(
        w_ih=r(G * H, I), w_hh=r(G * H, H),
        b_ih=r(G * H) if bias else None, b_hh=r(G * H) if bias else None,
        ln_ih=gain(G * H) if ln else None, ln_hh=gain(G * H) if ln else None,
        ln_c_weight=gain(H) if ln and mode == LSTM else None,
        ln_c_bias=r(H) if ln and mode == LSTM else None)
    x, h0 = r(T, B, I, scale=1.0), r(B, H, scale=1.0)
    c0 = r(B, H, scale=1.0) if mode == LSTM else None
    lengths = testing.random_lengths(B, T) if ragged else None
    keep_h, keep_c = (draw_keeps(0.3, zoneout == "train", (T, B, H), mode == LSTM, x)
                      if zoneout else (None, None))
    dy, dh_n = r(T, B, H, scale=1.0), r(B, H, scale=1.0)
    dc_n = r(B, H, scale=1.0) if mode == LSTM else None
    return dict(x=x, h0=h0, c0=c0, w=w, lengths=lengths, keep_h=keep_h, keep_c=keep_c,
                grads=(dy, dh_n, dc_n))


def _cast(v, dtype):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.to(dtype)
    if isinstance(v, tuple):
        return type(v)(*(_cast(t, dtype) for t in v)) if hasattr(v, "_fields") else tuple(
            _cast(t, dtype) for t in v)
    return v


def run(ops, mode, reverse, case, dtype):
    """(y, h_n, c_n, dx, dh0, dc0, *weight gradients) of one launcher pair."""
    c = {k: _cast(v, dtype) for k, v in case.items()}
    args = (mode, reverse, c["x"], c["h0"], c["c0"], c["w"], c["lengths"], c["keep_h"], c["keep_c"])
    y, h_n, c_n, saved = ops._fwd(*args)
    dx, dh0, dc0, dw = ops._bwd(*args, saved, *c["grads"])
    return (y, h_n, c_n, dx, dh0, dc0, *dw)


def check(backend, mode, reverse, case, dtype):
    got = run(_ops(backend), mode, reverse, case, dtype)
    rounded = {k: _cast(_cast(v, dtype), torch.float64) for k, v in case.items()}  # as seen
    want = run(reference, mode, reverse, rounded, torch.float64)
    rtol, atol = _tol(backend, dtype)
    # Below fp64 the rounding of a long recurrence adds up: a tensor may also be off by twice
    # what the reference itself is off by in this dtype (flash-attention's rule).
    own = run(reference, mode, reverse, case, dtype) if dtype != torch.float64 else want
    for g, e, o, name in zip(got, want, own, ("y", "h_n", "c_n") + NAMES):
        slack = 0.0 if e is None else 2 * (o.double() - e).abs().max().item()
        testing.assert_close(g, e, rtol=rtol, atol=max(atol, slack), name=name)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("mode", [LSTM, GRU])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("zoneout", [None, "train", "eval"], ids=["nozone", "zone_train", "zone_eval"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_matches_reference(backend, dtype, mode, layer_norm, zoneout, ragged, reverse):
    check(backend, mode, reverse, make_case(mode, layer_norm, zoneout, ragged), dtype)


# B = 1; H below, at and across vector widths (fp32: 8 or 16 lanes, fp64: 4 or 8) with a
# tail; a long-ish sequence with more rows than a thread's share.
SHAPES = {"B1": dict(T=4, B=1, I=3, H=13), "H37": dict(T=3, B=5, I=6, H=37),
          "H64": dict(T=3, B=4, I=8, H=64), "T20B17": dict(T=20, B=17, I=4, H=9)}


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("mode", [LSTM, GRU])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_shapes(backend, dtype, mode, layer_norm, shape):
    for ragged, reverse in ((False, False), (True, True)):
        case = make_case(mode, layer_norm, "train", ragged, **SHAPES[shape])
        check(backend, mode, reverse, case, dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", [LSTM, GRU])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
def test_without_biases(backend, mode, layer_norm):
    case = make_case(mode, layer_norm, "eval", True, bias=False)
    check(backend, mode, True, case, torch.float64)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", [LSTM, GRU])
def test_inference_outputs_match_training_outputs(backend, mode):
    """need_saved=False (the inference path) computes the same outputs and saves nothing."""
    case = make_case(mode, True, "eval", True)
    ops = _ops(backend)
    args = (mode, True, case["x"], case["h0"], case["c0"], case["w"], case["lengths"],
            case["keep_h"], case["keep_c"])
    full, lean = ops._fwd(*args), ops._fwd(*args, need_saved=False)
    assert lean[3] == ()
    for a, b, name in zip(full[:3], lean[:3], ("y", "h_n", "c_n")):
        testing.assert_close(b, a, rtol=0, atol=0, name=name)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode,layer_norm,zoneout,ragged,reverse", [
    (LSTM, True, "eval", True, True), (LSTM, True, "train", False, False),
    (GRU, True, "eval", True, False), (GRU, True, None, False, True),
    (LSTM, False, "train", True, False), (GRU, False, "eval", False, True)],
    ids=lambda v: str(v))
def test_gradcheck_fp64(backend, mode, layer_norm, zoneout, ragged, reverse):
    case = make_case(mode, layer_norm, zoneout, ragged, T=3, B=2, I=3, H=4)
    leaves = [t.clone().requires_grad_() if t is not None else None
              for t in (case["x"], case["h0"], case["c0"], *case["w"])]

    def f(x, h0, c0, *w):
        return LayerFunction.apply(_ops(backend), mode, reverse, VariantWeights, 2, x, h0, c0,
                                   case["lengths"], case["keep_h"], case["keep_c"], *w)

    assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", [LSTM, GRU])
def test_cpu_repeatable_and_thread_count_independent_sums(mode, restore_threads):
    """Two runs give the same bits; 1 and 2 threads agree to rounding. The gain and bias
    gradients are summed per column in a fixed order whatever the thread count; MKL's small
    GEMMs (here 9 rows) split their work by thread count, which moves the last bits. Under
    deterministic mode torch.empty is NaN-filled, so a read of an unwritten buffer would show."""
    if "cpu" not in FUSED:
        pytest.skip("the cpu backend is not available (fused_rnn._C not built)")
    case = make_case(mode, True, "train", True, T=7, B=9, I=5, H=21)
    names = ("y", "h_n", "c_n") + NAMES
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for threads in (2, 2, 1):
            torch.set_num_threads(threads)
            results.append(run(_ops("cpu"), mode, True, case, torch.float32))
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b, c, name in zip(*results, names):
        testing.assert_close(a, b, rtol=0, atol=0, name=name)
        testing.assert_close(c, a, rtol=1e-5, atol=1e-6, name=name)
        if a is not None:
            assert torch.isfinite(a).all(), name


def test_cpu_bad_input_names_the_argument():
    if "cpu" not in FUSED:
        pytest.skip("the cpu backend is not available (fused_rnn._C not built)")
    case = make_case(LSTM, True, "eval", False)
    ops = _ops("cpu")
    base = (LSTM, False, case["x"], case["h0"], case["c0"])
    with pytest.raises(RuntimeError, match="ln_c_weight"):
        ops._fwd(*base, case["w"]._replace(ln_c_weight=None), None, None, None)
    with pytest.raises(RuntimeError, match="keep_h must have shape"):
        ops._fwd(*base, case["w"], None, case["keep_h"][:2], None)
    with pytest.raises(RuntimeError, match="ln_hh has dtype"):
        ops._fwd(*base, case["w"]._replace(ln_hh=case["w"].ln_hh.float()), None, None, None)
    y, h_n, c_n, saved = ops._fwd(*base, case["w"], None, None, None)
    with pytest.raises(RuntimeError, match="saved must hold"):
        ops._bwd(*base, case["w"], None, None, None, saved[:-1], *case["grads"])
