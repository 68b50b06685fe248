"""Encoder-decoder attention: every backend's functional op and the modules against an
independent loop-by-loop oracle (outputs and every gradient), gradcheck in float64,
bad-input messages and NaN handling."""

import math

import pytest
import torch

import fused_rnn
from fused_rnn.functional import attention
from fused_rnn.testing import assert_close, randn, tolerance

B, TQ, TK, D, DQ, DV, A = 3, 4, 7, 5, 8, 6, 9
SCORES = ("dot", "scaled_dot", "general", "additive")
VALID_FORMS = ("lengths", "mask", "none", "lengths_empty_row", "mask_empty_row")
QUERY_FORMS = ("tq1", "tq4", "step2d")
EMPTY_ROW = 1  # the all-masked batch row of the *_empty_row forms


# --- the oracle: plain loops, written from MATH.md, shares no code with the package ---

def oracle(query, keys, values, score, valid, v=None, weight=None, scale=None):
    """query [B, Tq, Dq], keys [B, Tk, Dk], values [B, Tk, Dv], valid [B, Tk] bool or None."""
    Bn, Tq, Tk = query.shape[0], query.shape[1], keys.shape[1]
    ctx_rows, w_rows = [], []
    for b in range(Bn):
        ctx_b, w_b = [], []
        for i in range(Tq):
            q = query[b, i]
            idx = [j for j in range(Tk) if valid is None or bool(valid[b, j])]
            e = {}
            for j in idx:
                k = keys[b, j]
                if score == "dot":
                    e[j] = (q * k).sum()
                elif score == "scaled_dot":
                    e[j] = (q * k).sum() * (1 / math.sqrt(k.shape[0]) if scale is None else scale)
                elif score == "general":
                    e[j] = (weight.matmul(q) * k).sum()
                else:
                    e[j] = (v * torch.tanh(q + k)).sum()
            alpha = [query.new_zeros(()) for _ in range(Tk)]
            ctx = values.new_zeros(values.shape[-1])
            if idx:
                m = torch.stack([e[j] for j in idx]).max()
                p = {j: torch.exp(e[j] - m) for j in idx}
                s = sum(p.values())
                for j in idx:
                    alpha[j] = p[j] / s
                    ctx = ctx + alpha[j] * values[b, j]
            ctx_b.append(ctx)
            w_b.append(torch.stack(alpha))
        ctx_rows.append(torch.stack(ctx_b))
        w_rows.append(torch.stack(w_b))
    return torch.stack(ctx_rows), torch.stack(w_rows)


# --- inputs ---

def make_inputs(score, dtype, tq=TQ, step=False, tk=TK, d=D, dq=DQ, dv=DV, a=A):
    """Leaves requiring grad: query ([B, Dq] if ``step``), keys, values, and v / weight."""
    mk = lambda *s: randn(*s, dtype=dtype, requires_grad=True)  # noqa: E731
    qsize, ksize = {"general": (dq, d), "additive": (a, a)}.get(score, (d, d))
    query = mk(B, qsize) if step else mk(B, tq, qsize)
    keys, values = mk(B, tk, ksize), mk(B, tk, dv)
    v = mk(a) if score == "additive" else None
    weight = randn(d, dq, dtype=dtype, requires_grad=True, scale=0.5) if score == "general" else None
    return query, keys, values, v, weight


def make_valid(form, tk=TK):
    """``(kwargs for attention, valid [B, Tk] bool or None)``."""
    if form.startswith("lengths"):
        lengths = torch.tensor([tk, 0 if form.endswith("empty_row") else 3, tk - 2])
        return {"lengths": lengths}, torch.arange(tk) < lengths[:, None]
    if form.startswith("mask"):
        mask = torch.rand(B, tk) < 0.6
        mask[:, 1], mask[:, 4] = True, False  # every row has a hole and a valid key
        if form.endswith("empty_row"):
            mask[EMPTY_ROW] = False
        return {"mask": mask}, mask
    return {}, None


def grads(outputs, upstream, leaves):
    """Gradients of ``sum(out * up)`` w.r.t. ``leaves`` (None for a None leaf)."""
    present = [t for t in leaves if t is not None]
    loss = sum((o * u).sum() for o, u in zip(outputs, upstream))
    got = iter(torch.autograd.grad(loss, present))
    return [None if t is None else next(got) for t in leaves]


def fp64_leaves(tensors):
    return [None if t is None else t.detach().double().requires_grad_() for t in tensors]


# --- 1. functional op vs the oracle ---

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("qform", QUERY_FORMS)
@pytest.mark.parametrize("vform", VALID_FORMS)
@pytest.mark.parametrize("score", SCORES)
def test_functional_matches_oracle(backend, score, vform, qform, dtype):
    rtol, atol = tolerance(backend, dtype)
    step = qform == "step2d"
    leaves = make_inputs(score, dtype, tq=1 if qform == "tq1" else TQ, step=step)
    query, keys, values, v, weight = leaves
    kwargs, valid = make_valid(vform)
    ctx, w = attention(query, keys, values, score=score, v=v, weight=weight, **kwargs)

    q64, k64, val64, v64, w64 = ref_leaves = fp64_leaves(leaves)
    rctx, rw = oracle(q64.unsqueeze(1) if step else q64, k64, val64, score, valid, v64, w64)
    if step:
        rctx, rw = rctx.squeeze(1), rw.squeeze(1)
    assert ctx.dtype == dtype and w.dtype == dtype
    assert_close(ctx, rctx, rtol=rtol, atol=atol, name="context")
    assert_close(w, rw, rtol=rtol, atol=atol, name="weights")

    ups = [torch.randn_like(ctx), torch.randn_like(w)]
    got = grads([ctx, w], ups, leaves)
    want = grads([rctx, rw], [u.double() for u in ups], ref_leaves)
    for n, a, e in zip(("dquery", "dkeys", "dvalues", "dv", "dweight"), got, want):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)
        assert a is None or not a.isnan().any(), f"{n} has NaN"

    if vform.endswith("empty_row"):
        for n, t in (("context", ctx), ("weights", w), ("dquery", got[0]), ("dkeys", got[1]),
                     ("dvalues", got[2])):
            assert not t.isnan().any(), f"{n} has NaN"
            assert (t[EMPTY_ROW] == 0).all(), f"{n} of the all-masked row is not exactly 0"


def test_scaled_dot_explicit_scale(backend):
    query, keys, values, _, _ = make_inputs("scaled_dot", torch.float64)
    ctx, w = attention(query, keys, values, score="scaled_dot", scale=0.3, lengths=[7, 2, 5])
    valid = torch.arange(TK) < torch.tensor([7, 2, 5])[:, None]
    rctx, rw = oracle(query, keys, values, "scaled_dot", valid, scale=0.3)
    rtol, atol = tolerance(backend, torch.float64)
    assert_close(ctx, rctx, rtol=rtol, atol=atol, name="context")
    assert_close(w, rw, rtol=rtol, atol=atol, name="weights")


def test_values_default_to_keys(backend):
    query, keys, _, _, _ = make_inputs("dot", torch.float64)
    ctx, _ = attention(query, keys, lengths=[7, 2, 5])
    rctx, _ = attention(query, keys, keys, lengths=[7, 2, 5])
    assert ctx.shape == (B, TQ, D)
    assert_close(ctx, rctx, rtol=0, atol=0, name="context")


# --- 2. gradcheck ---

@pytest.mark.parametrize("vform", ["lengths_empty_row", "mask"])
@pytest.mark.parametrize("score", SCORES)
def test_gradcheck_float64(backend, score, vform):
    query, keys, values, v, weight = make_inputs(score, torch.float64, tq=2, tk=5, d=3, dq=4, dv=4, a=4)
    kwargs, _ = make_valid(vform, tk=5)
    extra = [t for t in (v, weight) if t is not None]

    def fn(q, k, val, *p):
        kw = {"v": p[0]} if score == "additive" else {"weight": p[0]} if score == "general" else {}
        return attention(q, k, val, score=score, **kwargs, **kw)

    assert torch.autograd.gradcheck(fn, (query, keys, values, *extra))


# --- 3. modules ---

def make_module(name, dtype=torch.float64):
    if name == "additive":
        return fused_rnn.AdditiveAttention(DQ, D, A, dtype=dtype)
    score = name.split("-")[1]
    sizes = (D, D) if score in ("dot", "scaled_dot") else (DQ, D)
    return fused_rnn.LuongAttention(*sizes, score=score, attn_size=A if score == "concat" else None,
                                    dtype=dtype)


def module_oracle(m, query, keys, values, valid):
    """The oracle applied to ``m``'s own parameters (projections written out here)."""
    if isinstance(m, fused_rnn.AdditiveAttention):
        pq = query.matmul(m.query_proj.weight.t()) + m.query_proj.bias
        return oracle(pq, keys.matmul(m.key_proj.weight.t()), values, "additive", valid, v=m.v)
    if m.score_name == "concat":
        pq, pk = query.matmul(m.query_proj.weight.t()), keys.matmul(m.key_proj.weight.t())
        return oracle(pq, pk, values, "additive", valid, v=m.v)
    if m.score_name == "general":
        return oracle(query, keys, values, "general", valid, weight=m.query_proj.weight)
    return oracle(query, keys, values, m.score_name, valid)


MODULES = ["additive", "luong-dot", "luong-scaled_dot", "luong-general", "luong-concat"]
STATE_KEYS = {
    "additive": ["v", "query_proj.weight", "query_proj.bias", "key_proj.weight"],
    "luong-dot": [], "luong-scaled_dot": [], "luong-general": ["query_proj.weight"],
    "luong-concat": ["v", "query_proj.weight", "key_proj.weight"],
}


def module_inputs(m, dtype=torch.float64, step=False):
    qsize = DQ if isinstance(m, fused_rnn.AdditiveAttention) or m.score_name in ("general", "concat") else D
    query = randn(B, qsize, dtype=dtype) if step else randn(B, TQ, qsize, dtype=dtype)
    return query.requires_grad_(), randn(B, TK, D, dtype=dtype, requires_grad=True), randn(
        B, TK, DV, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("vform", ["lengths_empty_row", "mask", "none"])
@pytest.mark.parametrize("name", MODULES)
def test_module_matches_oracle(backend, name, vform):
    m = make_module(name)
    rtol, atol = tolerance(backend, torch.float64)
    query, keys, values = module_inputs(m)
    kwargs, valid = make_valid(vform)
    ctx, w = m(query, keys, values, **kwargs)
    rctx, rw = module_oracle(m, query, keys, values, valid)
    assert_close(ctx, rctx, rtol=rtol, atol=atol, name="context")
    assert_close(w, rw, rtol=rtol, atol=atol, name="weights")
    ups = [torch.randn_like(ctx), torch.randn_like(w)]
    leaves = [query, keys, values, *m.parameters()]
    names = ["dquery", "dkeys", "dvalues"] + [f"d{n}" for n, _ in m.named_parameters()]
    for n, a, e in zip(names, grads([ctx, w], ups, leaves), grads([rctx, rw], ups, leaves)):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


@pytest.mark.parametrize("name", MODULES)
def test_module_values_default_to_raw_keys(backend, name):
    m = make_module(name)
    query, keys, _ = module_inputs(m)
    ctx, _ = m(query, keys, lengths=[7, 2, 5])
    rctx, _ = m(query, keys, keys, lengths=[7, 2, 5])
    assert ctx.shape == (B, TQ, D)
    assert_close(ctx, rctx, rtol=0, atol=0, name="context")


@pytest.mark.parametrize("name", MODULES)
def test_module_projected_keys_reused_over_decoder_steps(backend, name):
    m = make_module(name)
    rtol, atol = tolerance(backend, torch.float64)
    query, keys, values = module_inputs(m)
    full_ctx, full_w = m(query, keys, values, lengths=[7, 0, 5])
    pk = m.project_keys(keys)
    for t in range(TQ):
        ctx, w = m(query[:, t], keys, values, lengths=[7, 0, 5], projected_keys=pk)
        rctx, rw = m(query[:, t], keys, values, lengths=[7, 0, 5])
        assert ctx.shape == (B, DV) and w.shape == (B, TK)
        assert_close(ctx, rctx, rtol=rtol, atol=atol, name=f"context step {t}")
        assert_close(w, rw, rtol=rtol, atol=atol, name=f"weights step {t}")
        assert_close(ctx, full_ctx[:, t], rtol=rtol, atol=atol, name=f"context step {t} vs all")
        assert_close(w, full_w[:, t], rtol=rtol, atol=atol, name=f"weights step {t} vs all")


@pytest.mark.parametrize("name", MODULES)
def test_module_state_dict_and_gradients_reach_every_parameter(backend, name):
    m = make_module(name, dtype=torch.float32)
    assert list(m.state_dict()) == STATE_KEYS[name]
    query, keys, values = module_inputs(m, torch.float32, step=True)
    ctx, w = m(query, keys, values, mask=torch.rand(B, TK) < 0.7)
    assert ctx.shape == (B, DV) and w.shape == (B, TK)
    (ctx * torch.randn_like(ctx)).sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and p.grad.isfinite().all(), n


# --- 4. bad input ---

def _bad(**over):
    """Valid dot-score arguments with ``over`` replacing some of them."""
    args = {"query": randn(B, TQ, D), "keys": randn(B, TK, D), "values": randn(B, TK, DV),
            "score": "dot"}
    args.update(over)
    return args


BAD = {
    "query-1d": (lambda: _bad(query=randn(D)), ValueError, r"query must be 2-D .* or 3-D"),
    "query-4d": (lambda: _bad(query=randn(B, 1, TQ, D)), ValueError, r"query must be 2-D .* or 3-D"),
    "keys-2d": (lambda: _bad(keys=randn(B, D)), ValueError, "keys must be 3-D"),
    "batch-mismatch": (lambda: _bad(query=randn(B + 1, TQ, D)), ValueError, "same batch size"),
    "dot-feature-mismatch": (lambda: _bad(query=randn(B, TQ, D + 1)), ValueError, "query and keys must have the same feature size"),
    "values-wrong-steps": (lambda: _bad(values=randn(B, TK + 1, DV)), ValueError, "values must have shape"),
    "values-2d": (lambda: _bad(values=randn(B, TK)), ValueError, "values must have shape"),
    "lengths-too-long": (lambda: _bad(lengths=[TK + 1, 2, 3]), ValueError, r"lengths must lie in \[0, 7\]"),
    "lengths-negative": (lambda: _bad(lengths=[-1, 2, 3]), ValueError, r"lengths must lie in \[0, 7\]"),
    "lengths-wrong-size": (lambda: _bad(lengths=[1, 2]), ValueError, "lengths must be 1-D with one entry per batch row"),
    "lengths-float": (lambda: _bad(lengths=torch.tensor([1.0, 2.0, 3.0])), TypeError, "lengths must have an integer dtype"),
    "mask-wrong-shape": (lambda: _bad(mask=torch.ones(B, TK + 1, dtype=torch.bool)), ValueError, "mask must have shape"),
    "mask-not-bool": (lambda: _bad(mask=torch.ones(B, TK)), TypeError, "mask must be a bool tensor"),
    "lengths-and-mask": (lambda: _bad(lengths=[1, 2, 3], mask=torch.ones(B, TK, dtype=torch.bool)),
                         ValueError, "lengths or mask"),
    "additive-without-v": (lambda: _bad(score="additive"), ValueError, r"needs v\b"),
    "additive-size-mismatch": (lambda: _bad(score="additive", keys=randn(B, TK, D + 1), v=randn(D)),
                               ValueError, "attn_size"),
    "additive-v-wrong-shape": (lambda: _bad(score="additive", v=randn(D + 1)), ValueError, r"\bv must"),
    "general-without-weight": (lambda: _bad(score="general"), ValueError, "needs weight"),
    "general-weight-wrong-shape": (lambda: _bad(score="general", weight=randn(D, D + 1)), ValueError,
                                   "weight must have shape"),
    "v-with-dot": (lambda: _bad(v=randn(D)), ValueError, r"v is only used by score='additive'"),
    "weight-with-dot": (lambda: _bad(weight=randn(D, D)), ValueError, r"weight is only used by score='general'"),
    "scale-with-dot": (lambda: _bad(scale=0.5), ValueError, r"scale is only used by score='scaled_dot'"),
    "unknown-score": (lambda: _bad(score="cosine"), ValueError, "score must be one of"),
    "mixed-dtypes": (lambda: _bad(keys=randn(B, TK, D, dtype=torch.float64)), TypeError, "keys has dtype .* but query has dtype"),
    "values-dtype": (lambda: _bad(values=randn(B, TK, DV, dtype=torch.float64)), TypeError, "values has dtype"),
    "integer-query": (lambda: _bad(query=torch.ones(B, TQ, D, dtype=torch.int64)), TypeError, "query must be a floating-point"),
    "query-not-tensor": (lambda: _bad(query=[[1.0]]), TypeError, "query must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_the_argument(case):
    make, exc, match = BAD[case]
    args = make()
    with pytest.raises(exc, match=match):
        attention(args.pop("query"), args.pop("keys"), args.pop("values"), **args)


def test_luong_dot_needs_equal_sizes():
    for score in ("dot", "scaled_dot"):
        with pytest.raises(ValueError, match="query_size == key_size"):
            fused_rnn.LuongAttention(D + 1, D, score=score)
    with pytest.raises(ValueError, match="score must be"):
        fused_rnn.LuongAttention(D, D, score="cosine")


# --- 5. NaN ---

@pytest.mark.parametrize("vform", ["lengths", "mask"])
@pytest.mark.parametrize("score", SCORES)
def test_nan_in_valid_key_propagates_to_its_row_only(backend, score, vform):
    query, keys, values, v, weight = make_inputs(score, torch.float64)
    kwargs, valid = make_valid(vform)
    bad = keys.detach().clone()
    bad[0, 1] = float("nan")  # key 1 is valid in every row of both forms
    assert valid[0, 1]
    ctx, w = attention(query, bad, values, score=score, v=v, weight=weight, **kwargs)
    clean_ctx, clean_w = attention(query, keys, values, score=score, v=v, weight=weight, **kwargs)
    assert ctx[0].isnan().all(), "NaN in a valid key must reach every context of its row"
    assert_close(ctx[1:], clean_ctx[1:], rtol=0, atol=0, name="context of the other rows")
    assert_close(w[1:], clean_w[1:], rtol=0, atol=0, name="weights of the other rows")


@pytest.mark.parametrize("separate_values", [True, False], ids=["values", "values=keys"])
@pytest.mark.parametrize("vform", ["lengths", "mask"])
@pytest.mark.parametrize("score", SCORES)
def test_nan_in_masked_key_changes_nothing(backend, score, vform, separate_values):
    query, keys, values, v, weight = make_inputs(score, torch.float64)
    if not separate_values:
        values = None
    kwargs, valid = make_valid(vform)
    b, j = 1, int((~valid[1]).nonzero()[0])  # a masked key of row 1
    leaves = [query, keys, values, v, weight]
    bad = [query, keys.detach().clone().requires_grad_(),
           None if values is None else values.detach().clone().requires_grad_(), v, weight]
    with torch.no_grad():
        bad[1][b, j] = float("nan")
        if bad[2] is not None:
            bad[2][b, j] = float("nan")
    outs = [attention(q, k, val, score=score, v=vv, weight=ww, **kwargs) for q, k, val, vv, ww in (leaves, bad)]
    for n, a, e in zip(("context", "weights"), outs[1], outs[0]):
        assert_close(a, e, rtol=0, atol=0, name=n)
    ups = [torch.randn_like(t) for t in outs[0]]
    names = ("dquery", "dkeys", "dvalues", "dv", "dweight")
    for n, a, e in zip(names, grads(outs[1], ups, bad), grads(outs[0], ups, leaves)):
        assert_close(a, e, rtol=0, atol=0, name=n)
        assert a is None or not a.isnan().any(), f"{n} has NaN"


@pytest.mark.parametrize("qform", QUERY_FORMS)
@pytest.mark.parametrize("vform", ["lengths_empty_row", "mask", "none"])
@pytest.mark.parametrize("score", SCORES)
def test_without_weights_context_and_gradients_are_the_same(backend, score, vform, qform):
    """need_weights=False returns no weights (a fused backend never writes them) and changes
    nothing else: the context and every gradient match the oracle's."""
    dtype = torch.float64
    rtol, atol = tolerance(backend, dtype)
    step = qform == "step2d"
    leaves = make_inputs(score, dtype, tq=1 if qform == "tq1" else TQ, step=step)
    query, keys, values, v, weight = leaves
    kwargs, valid = make_valid(vform)
    ctx, w = attention(query, keys, values, score=score, v=v, weight=weight, need_weights=False,
                       **kwargs)
    assert w is None
    ref_leaves = fp64_leaves(leaves)
    q64, k64, val64, v64, w64 = ref_leaves
    rctx, _ = oracle(q64.unsqueeze(1) if step else q64, k64, val64, score, valid, v64, w64)
    rctx = rctx.squeeze(1) if step else rctx
    assert_close(ctx, rctx, rtol=rtol, atol=atol, name="context")
    up = torch.randn_like(ctx)
    for n, a, e in zip(("dquery", "dkeys", "dvalues", "dv", "dweight"),
                       grads([ctx], [up], leaves), grads([rctx], [up], ref_leaves)):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


@pytest.mark.parametrize("name", ["additive", "luong-general"])
def test_module_need_weights_false(backend, name):
    m = (fused_rnn.AdditiveAttention(6, 5, 4) if name == "additive"
         else fused_rnn.LuongAttention(6, 5, score="general"))
    q, k = torch.randn(2, 6), torch.randn(2, 7, 5)
    ctx, w = m(q, k, lengths=torch.tensor([7, 3]), need_weights=False)
    ctx2, w2 = m(q, k, lengths=torch.tensor([7, 3]))
    assert w is None and w2.shape == (2, 7)
    torch.testing.assert_close(ctx, ctx2)


@pytest.mark.parametrize("score", ["additive", "general"])
def test_strided_parameters_read_as_their_values(backend, score):
    """v (or the general score's weight) given as a strided view: the kernels read their
    argument densely, so a binding must hand them a contiguous copy (a strided v was read
    with the wrong stride before; found in review)."""
    query, keys, values, v, weight = make_inputs(score, torch.float64)
    kwargs, _ = make_valid("mask")
    if score == "additive":
        wide = torch.stack([v.detach(), torch.randn_like(v)], 1).requires_grad_()
        strided = {"v": wide[:, 0]}
        dense = {"v": v}
    else:
        wide = torch.stack([weight.detach(), torch.randn_like(weight)], 2).requires_grad_()
        strided = {"weight": wide[..., 0]}
        dense = {"weight": weight}
    assert not next(iter(strided.values())).is_contiguous()
    got = attention(query, keys, values, score=score, **strided, **kwargs)
    want = attention(query, keys, values, score=score, **dense, **kwargs)
    for n, a, e in zip(("context", "weights"), got, want):
        assert_close(a, e, rtol=1e-12, atol=1e-12, name=n)
    up = torch.randn_like(got[0])
    (g,) = torch.autograd.grad((got[0] * up).sum(), wide)
    (e,) = torch.autograd.grad((want[0] * up).sum(), next(iter(dense.values())))
    assert_close(g[..., 0] if score == "general" else g[:, 0], e, rtol=1e-12, atol=1e-12,
                 name="d(strided parameter)")
