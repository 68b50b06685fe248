"""The Triton attention module (fused_rnn/ops/attention/triton.py) through the autograd
Function against the plain-PyTorch reference: context, weights and every input's gradient
for every score kind, valid-key form and query length, with default tiles and with tiles
shrunk so that every loop runs several times and the forward splits the keys
(flash-decoding); gradcheck in fp64; NaN handling. Without a GPU the kernels run in the
Triton interpreter."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined: before the import

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed: the triton backend cannot run")

from fused_rnn.ops.attention import reference  # noqa: E402
from fused_rnn.ops.attention import triton as tattn  # noqa: E402
from fused_rnn.ops.attention.function import fused_attention  # noqa: E402
from fused_rnn.testing import assert_close, randn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, TK, D, DQ, DV = 3, 7, 5, 8, 6
EMPTY_ROW = 1
SCORES = ("dot", "scaled_dot", "general", "additive")
VALID_FORMS = ("lengths", "mask", "none", "empty_row")
# (rtol, atol) against an fp64 reference; the cpu backend's table.
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-7, 1e-9)}
# Every tile as small as the kernels allow (16 on the tl.dot path), and the keys split
# whatever their number, two blocks a split: every loop runs more than once.
TINY = tattn.Limits(block_n=2, block_k=4, block_c=4, block_c_fwd=4, split_min_keys=0,
                    split_min_blocks=2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(params=["default", "tiny"])
def tiles(request, monkeypatch):
    """Runs the test with the default tiles, then with TINY."""
    if request.param == "tiny":
        monkeypatch.setattr(tattn, "LIMITS", TINY)
    return request.param


@pytest.fixture
def launched(monkeypatch):
    """Names of the kernels each test launched."""
    names = []
    real = tattn._launch

    def spy(kernel, grid, args, consts, num_warps):
        names.append(kernel.__name__)
        real(kernel, grid, args, consts, num_warps)

    # _fwd/_bwd bind the launcher as a default argument: patch the defaults.
    monkeypatch.setattr(tattn._fwd, "__defaults__", (spy,))
    monkeypatch.setattr(tattn._bwd, "__defaults__", (spy,))
    return names


def make_inputs(score, dtype, tq, tk=TK, d=D, dv=DV, b=B):
    """Leaves requiring grad: query, keys, values, v (additive) or weight (general)."""
    mk = lambda *s: randn(*s, dtype=dtype, device=DEVICE, requires_grad=True)  # noqa: E731
    query = mk(b, tq, DQ if score == "general" else d)
    v = mk(d) if score == "additive" else None
    weight = randn(d, DQ, dtype=dtype, device=DEVICE, requires_grad=True, scale=0.5) \
        if score == "general" else None
    return [query, mk(b, tk, d), mk(b, tk, dv), v, weight]


def make_valid(form, tk=TK, b=B):
    """valid [b, tk] bool or None; lengths as the entry point turns them into a mask."""
    if form == "none":
        return None
    if form == "lengths":
        lengths = torch.tensor([tk, 3, tk - 2][:b], device=DEVICE)
        return torch.arange(tk, device=DEVICE) < lengths[:, None]
    valid = torch.rand(b, tk, device=DEVICE) < 0.6
    valid[:, 1], valid[:, 4 % tk] = True, False  # every row has a hole and a valid key
    if form == "empty_row":
        valid[EMPTY_ROW] = False
    return valid


def attend(ops, leaves, valid, score, need_weights):
    q, k, x, v, w = leaves
    return fused_attention(ops, q, k, x, valid, score, v, w, None, need_weights)


def grads(outputs, upstream, leaves):
    present = [t for t in leaves if t is not None]
    loss = sum((o * u).sum() for o, u in zip(outputs, upstream) if o is not None)
    got = iter(torch.autograd.grad(loss, present))
    return [None if t is None else next(got) for t in leaves]


def check_against_reference(score, valid, leaves, need_weights, dtype):
    """Asserts context, weights and every gradient match the fp64 reference; returns them."""
    rtol, atol = TOLERANCES[dtype]
    ctx, w = attend(tattn, leaves, valid, score, need_weights)
    ref_leaves = [None if t is None else t.detach().double().requires_grad_() for t in leaves]
    q, k, x, v, weight = ref_leaves
    rctx, rw = reference.forward(q, k, x, valid, score, v, weight)
    assert ctx.dtype == dtype
    assert_close(ctx, rctx, rtol=rtol, atol=atol, name="context")
    if need_weights:
        assert_close(w, rw, rtol=rtol, atol=atol, name="weights")
    else:
        assert w is None, "need_weights=False must return no weights"
        rw = None
    ups = [torch.randn_like(ctx), None if w is None else torch.randn_like(w)]
    got = grads([ctx, w], ups, leaves)
    want = grads([rctx, rw], [None if u is None else u.double() for u in ups], ref_leaves)
    for name, a, e in zip(("dquery", "dkeys", "dvalues", "dv", "dweight"), got, want):
        assert_close(a, e, rtol=rtol, atol=atol, name=name)
        assert a is None or not a.isnan().any(), f"{name} has NaN"
    return ctx, w, got


# --- parity ---

@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no_weights"])
@pytest.mark.parametrize("tq", [1, 4], ids=["tq1", "tq4"])
@pytest.mark.parametrize("vform", VALID_FORMS)
@pytest.mark.parametrize("score", SCORES)
def test_tiny_tiles_match_reference(monkeypatch, launched, score, vform, tq, need_weights):
    """Tiles of 2 keys and 4 features: every loop runs several times, and the forward splits
    the keys and merges the splits."""
    monkeypatch.setattr(tattn, "LIMITS", TINY)
    leaves = make_inputs(score, torch.float32, tq, b=2)  # row 0 attends, row 1 may be empty
    valid = make_valid(vform, b=2)
    ctx, w, got = check_against_reference(score, valid, leaves, need_weights, torch.float32)
    uses_dot = score != "additive" and tq > 1  # 16-key tl.dot tiles: Tk = 7 is one block
    assert ("_attn_combine" in launched) != uses_dot, launched
    assert ("_attn_weights" in launched) == need_weights, launched
    if vform == "empty_row":
        for name, t in (("context", ctx), ("weights", w), ("dquery", got[0]),
                        ("dkeys", got[1]), ("dvalues", got[2])):
            assert t is None or (t[EMPTY_ROW] == 0).all(), f"{name} of the all-masked row is not 0"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("tq", [1, 4], ids=["tq1", "tq4"])
@pytest.mark.parametrize("score", SCORES)
def test_default_tiles_match_reference(launched, score, tq, dtype):
    leaves = make_inputs(score, dtype, tq)
    check_against_reference(score, make_valid("empty_row"), leaves, True, dtype)
    assert "_attn_combine" not in launched, "7 keys must not be split with the default limits"


def test_tl_dot_tiles_over_several_blocks_and_splits(monkeypatch, launched):
    """Sizes above the 16-wide tl.dot tiles: several query, key, feature and column blocks,
    and the keys split across programs."""
    tiles16 = TINY._replace(block_n=16, block_k=16, block_c=16, block_c_fwd=16)
    monkeypatch.setattr(tattn, "LIMITS", tiles16)
    leaves = make_inputs("scaled_dot", torch.float32, tq=20, tk=40, d=36, dv=34, b=2)
    valid = make_valid("mask", tk=40, b=2)
    check_against_reference("scaled_dot", valid, leaves, True, torch.float32)
    assert "_attn_combine" in launched, launched


@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
def test_no_keys_gives_zero_context_and_gradients(score):
    leaves = make_inputs(score, torch.float32, tq=2, tk=0)
    ctx, w = attend(tattn, leaves, None, score, True)
    assert w.shape == (B, 2, 0)
    assert_close(ctx, torch.zeros_like(ctx), rtol=0, atol=0, name="context")
    for name, g in zip(("dquery", "dv"), grads([ctx], [torch.randn_like(ctx)], leaves)[::3]):
        assert g is None or (g == 0).all(), f"{name} is not 0"


# --- gradcheck ---

@pytest.mark.parametrize("score, tiles", [(s, "default") for s in SCORES] +
                         [("scaled_dot", "tiny"), ("additive", "tiny")], indirect=["tiles"])
def test_gradcheck_float64(score, tiles):
    leaves = make_inputs(score, torch.float64, tq=2, tk=5, d=3, dv=2, b=2)
    valid = make_valid("empty_row", tk=5, b=2)
    present = [t for t in leaves if t is not None]

    def fn(*args):
        it = iter(args)
        return attend(tattn, [None if t is None else next(it) for t in leaves], valid, score, True)

    assert torch.autograd.gradcheck(fn, present, fast_mode=True)


# --- NaN ---

@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
def test_nan_in_masked_key_and_value_changes_nothing(score, tiles):
    leaves = make_inputs(score, torch.float32, tq=2)
    valid = make_valid("mask")
    bad = list(leaves)
    bad[1], bad[2] = (t.detach().clone().requires_grad_() for t in leaves[1:3])
    with torch.no_grad():
        bad[1][0, 4], bad[2][0, 4] = float("nan"), float("inf")  # key 4 is masked in every row
    outs = [attend(tattn, ls, valid, score, True) for ls in (leaves, bad)]
    for name, a, e in zip(("context", "weights"), outs[1], outs[0]):
        assert_close(a, e, rtol=0, atol=0, name=name)
    ups = [torch.randn_like(t) for t in outs[0]]
    for name, a, e in zip(("dquery", "dkeys", "dvalues", "dv"), grads(outs[1], ups, bad),
                          grads(outs[0], ups, leaves)):
        assert_close(a, e, rtol=0, atol=0, name=name)


@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
def test_nan_in_valid_key_reaches_its_row_only(score, tiles):
    leaves = make_inputs(score, torch.float32, tq=2)
    valid = make_valid("mask")
    bad = leaves[1].detach().clone()
    bad[0, 1] = float("nan")  # key 1 is valid in every row
    ctx, w = attend(tattn, [leaves[0], bad, *leaves[2:]], valid, score, True)
    clean_ctx, clean_w = attend(tattn, leaves, valid, score, True)
    assert ctx[0].isnan().all(), "NaN in a valid key must reach every context of its row"
    assert w[0][:, valid[0]].isnan().all(), "NaN in a valid key must reach its row's weights"
    assert_close(ctx[1:], clean_ctx[1:], rtol=0, atol=0, name="context of the other rows")
    assert_close(w[1:], clean_w[1:], rtol=0, atol=0, name="weights of the other rows")


# --- refusals ---

def test_refusals_name_the_argument():
    q, k, x = (randn(2, 3, 4, device=DEVICE) for _ in range(3))
    with pytest.raises(ValueError, match="kind must be one of dot, additive"):
        tattn._fwd(q, k, x, None, "cosine", None, 1.0, True)
    with pytest.raises(ValueError, match=r"additive attention needs v \[attn_size\]"):
        tattn._fwd(q, k, x, None, "additive", None, 1.0, True)
    with pytest.raises(TypeError, match="keys must match query's device and dtype"):
        tattn._fwd(q, k.double(), x, None, "dot", None, 1.0, True)
    if DEVICE == "cpu":
        with pytest.raises(TypeError, match="query dtypes float32, float64 on cpu, got bfloat16"):
            tattn._fwd(q.bfloat16(), k.bfloat16(), x.bfloat16(), None, "dot", None, 1.0, True)
