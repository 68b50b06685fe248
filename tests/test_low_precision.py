"""bf16 and fp16: every backend that accepts the dtype is at most 2x as far from an fp64
run of the same computation as torch does in that dtype (the flash-attention rule).

Recurrence: the baseline is torch.nn.LSTM/GRU/RNN in the dtype. Attention has no torch.nn
module: the baseline is torch's scaled_dot_product_attention for the dot scores and the
plain-PyTorch formula in the dtype for the additive score. The fp64 run uses the same
rounded inputs and weights, so only the arithmetic differs. Measured: outputs, final
states and the gradients of the input and of every weight.
"""


import pytest
import torch

import fused_rnn
from fused_rnn import backends
from fused_rnn.functional import attention
from fused_rnn import testing

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
T, B, I, H = 12, 5, 16, 24


def _params(op: str):
    """(backend, dtype name) for each available backend declaring the dtype; skipped, with
    the backend's own words, where it refuses the call on this device."""
    params = []
    for dn, dt in HALF.items():
        for name in testing.testable_backends():
            b = backends.get_backend(name)
            if dt not in b.dtypes or DEVICE not in b.device_types:
                continue
            reasons = b.not_supported_reasons(backends.OpCall(op, torch.device(DEVICE), dt))
            marks = [pytest.mark.skip(reason="; ".join(reasons))] if reasons else []
            params.append(pytest.param(name, dn, id=f"{name}-{dn}", marks=marks))
    return params


def _floor(ref: torch.Tensor, dtype) -> float:
    """Half an ulp at the reference's largest magnitude: rounding the result itself costs that."""
    return 0.5 * torch.finfo(dtype).eps * max(1.0, ref.abs().max().item())


def _check(names, got, base, want, dtype, what):
    report = []
    for n, g, b, w in zip(names, got, base, want):
        err, base_err = (g - w).abs().max().item(), (b - w).abs().max().item()
        report.append(f"{n}: {err:.3g} vs torch {base_err:.3g}")
        assert err <= 2 * base_err + _floor(w, dtype), f"{what}: " + "; ".join(report)


# --- recurrence ---

MODES = {"lstm": ("LSTM", {}), "gru": ("GRU", {}), "rnn_tanh": ("RNN", {}),
         "lstm_proj": ("LSTM", {"proj_size": 8})}


def _run_module(m, x, ups, backend=None):
    x = x.detach().requires_grad_()
    if backend is None:
        out, hidden = m(x)
    else:
        with fused_rnn.use_backend(backend):
            out, hidden = m(x)
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    loss = sum((t * u.to(t.dtype)).sum() for t, u in zip([out] + states, ups))
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
    return [t.detach().double() for t in [out] + states + list(grads)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend,dt", _params("recurrence"))
def test_recurrence_error_at_most_twice_torch_nn(backend, dt, mode):
    dtype = HALF[dt]
    cls, kw = MODES[mode]
    torch_m = getattr(torch.nn, cls)(I, H, bidirectional=True, **kw).to(DEVICE, dtype)
    fused_m = getattr(fused_rnn, cls)(I, H, bidirectional=True, **kw).to(DEVICE, dtype)
    fused_m.load_state_dict(torch_m.state_dict())
    exact = getattr(fused_rnn, cls)(I, H, bidirectional=True, **kw).to(DEVICE, torch.float64)
    exact.load_state_dict(torch_m.state_dict())  # the same rounded weights, in fp64
    x = torch.randn(T, B, I, device=DEVICE).to(dtype)
    with torch.no_grad():
        out, hidden = torch_m(x)
    shapes = [out.shape] + [t.shape for t in (hidden if isinstance(hidden, tuple) else (hidden,))]
    ups = [torch.randn(s, device=DEVICE).to(dtype).double() for s in shapes]
    want = _run_module(exact, x.double(), ups, "reference")
    base = _run_module(torch_m, x, ups)
    got = _run_module(fused_m, x, ups, backend)
    names = ["output"] + [f"state{i}" for i in range(len(shapes) - 1)] + ["d_input"] + [
        f"d_{n}" for n, _ in fused_m.named_parameters()]
    _check(names, got, base, want, dtype, f"{backend} {mode} {dt}")


@pytest.mark.skipif("triton" not in testing.testable_backends(), reason="triton is not available")
def test_triton_recurrence_on_cpu_refuses_bf16_or_is_right():
    m = fused_rnn.GRU(4, 16).bfloat16()
    x = torch.randn(3, 2, 4).bfloat16()
    with fused_rnn.use_backend("reference"):
        want, _ = m(x)
    try:
        with fused_rnn.use_backend("triton"):
            got, _ = m(x)
    except (TypeError, backends.BackendError):
        return  # refused, with a reason: fine
    assert (got.float() - want.float()).abs().max() < 0.05, "wrong bf16 answer"


# --- attention ---

SCORES = ("dot", "scaled_dot", "additive")
TQ, TK, D, DV = 5, 9, 16, 12


def _torch_attention(score, q, k, vals, v, valid):
    """torch in the dtype itself: SDPA for the dot scores, the plain formula for additive."""
    if score == "additive":
        e = torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)).matmul(v)
        e = e.masked_fill(~valid.unsqueeze(1), float("-inf"))
        return torch.softmax(e, -1).matmul(vals)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, vals, attn_mask=valid.unsqueeze(1), scale=1.0 if score == "dot" else None)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("backend,dt", _params("attention"))
def test_attention_error_at_most_twice_torch(backend, dt, score):
    dtype = HALF[dt]
    q, k = torch.randn(B, TQ, D, device=DEVICE), torch.randn(B, TK, D, device=DEVICE)
    vals = torch.randn(B, TK, DV, device=DEVICE)
    v = torch.randn(D, device=DEVICE) if score == "additive" else None
    lengths = torch.tensor([TK, 4, 7, 1, TK])
    valid = (torch.arange(TK) < lengths[:, None]).to(DEVICE)
    up = torch.randn(B, TQ, DV, device=DEVICE).to(dtype)

    def run(fn, dtype_, backend_=None):
        leaves = [t.to(dtype).to(dtype_).requires_grad_() for t in (q, k, vals, v) if t is not None]
        if backend_ is None:
            ctx = fn(*leaves)
        else:
            with fused_rnn.use_backend(backend_):
                ctx = fn(*leaves)
        grads = torch.autograd.grad((ctx * up.to(dtype_)).sum(), leaves)
        return [t.detach().double() for t in (ctx,) + grads]

    def fused(q_, k_, vals_, v_=None):
        return attention(q_, k_, vals_, score=score, lengths=lengths, v=v_)[0]

    def base(q_, k_, vals_, v_=None):
        return _torch_attention(score, q_, k_, vals_, v_, valid)

    want = run(fused, torch.float64, "reference")
    names = ["context", "d_query", "d_keys", "d_values", "d_v"]
    _check(names, run(fused, dtype, backend), run(base, dtype), want, dtype,
           f"{backend} attention {score} {dt}")
