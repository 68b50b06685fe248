"""Under torch.autocast("cpu", dtype=torch.bfloat16) the fused modules return the dtypes
torch.nn's return, and values and gradients within bf16 tolerance of torch.nn under the
same autocast (both measured against fp64, so neither side's rounding is the oracle)."""

import copy

import pytest
import torch

import fused_rnn
from fused_rnn import backends
from fused_rnn import testing
from fused_rnn.testing import randn

I, H, T, B = 16, 24, 5, 3


def _bf16_backends(op):
    return [b for b in testing.testable_backends()
            if not backends.get_backend(b).not_supported_reasons(
                backends.OpCall(op, torch.device("cpu"), torch.bfloat16))]


BF16_BACKENDS = _bf16_backends("recurrence")
ATTENTION_BF16_BACKENDS = _bf16_backends("attention")
MODULES = {
    "lstm": (torch.nn.LSTM, fused_rnn.LSTM, dict(num_layers=2, bidirectional=True)),
    "gru": (torch.nn.GRU, fused_rnn.GRU, dict(num_layers=2)),
    "rnn": (torch.nn.RNN, fused_rnn.RNN, {}),
    "lstm_cell": (torch.nn.LSTMCell, fused_rnn.LSTMCell, {}),
    "gru_cell": (torch.nn.GRUCell, fused_rnn.GRUCell, {}),
    "rnn_cell": (torch.nn.RNNCell, fused_rnn.RNNCell, {}),
}


def _outputs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _outputs(o)]


def _errors(module, x, exact_module):
    """Max |output - fp64 output| per output, and the same for each gradient."""
    exact_module = copy.deepcopy(exact_module)  # its gradients are this call's alone
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = _outputs(module(x))
    x64 = x.detach().double().requires_grad_(True)
    exact = _outputs(exact_module(x64))
    weights = [torch.linspace(-1, 1, o.shape[-1], dtype=torch.float64) for o in exact]
    sum((o.double() * w).sum() for o, w in zip(outs, weights)).backward()
    sum((o * w).sum() for o, w in zip(exact, weights)).backward()
    grads = [x.grad] + [p.grad for p in module.parameters()]
    grads_exact = [x64.grad] + [p.grad for p in exact_module.parameters()]
    return ([o.dtype for o in outs],
            [(o.double() - e).abs().max().item() for o, e in zip(outs, exact)],
            [(g.double() - e).abs().max().item() for g, e in zip(grads, grads_exact)])


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("backend_name", BF16_BACKENDS)
def test_autocast_bf16_matches_torch_nn(backend_name, name):
    torch_cls, fused_cls, kw = MODULES[name]
    ref = torch_cls(I, H, **kw)
    fused = fused_cls(I, H, **kw)
    fused.load_state_dict(ref.state_dict())
    exact = torch_cls(I, H, **kw).double()
    exact.load_state_dict(ref.state_dict())
    x = randn(*((T, B, I) if "cell" not in name else (B, I)), requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    with fused_rnn.use_backend(backend_name):
        dtypes, out_err, grad_err = _errors(fused, x, exact)
    ref_dtypes, ref_out_err, ref_grad_err = _errors(ref, x_ref, exact)
    assert dtypes == ref_dtypes, f"result dtypes {dtypes}, torch.nn returns {ref_dtypes}"
    # Same rounding points as torch.nn (bf16 operands, fp32 accumulation): errors of the
    # same size; 2x torch.nn's, with a floor of a few bf16 ulps at these magnitudes.
    for kind, errs, ref_errs in (("output", out_err, ref_out_err), ("grad", grad_err, ref_grad_err)):
        for i, (e, r) in enumerate(zip(errs, ref_errs)):
            assert e <= max(2 * r, 2e-2), f"{kind} {i}: error {e:.2e} vs torch.nn's {r:.2e}"


@pytest.mark.parametrize("score", ["additive", "general"])
@pytest.mark.parametrize("backend_name", ATTENTION_BF16_BACKENDS)
def test_autocast_attention_computes_in_bf16_close_to_fp32(backend_name, score):
    module = (fused_rnn.AdditiveAttention(8, 10, 12) if score == "additive"
              else fused_rnn.LuongAttention(8, 10, score="general"))
    q, k = randn(2, 3, 8), randn(2, 7, 10)
    lengths = torch.tensor([7, 4])
    with fused_rnn.use_backend(backend_name):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            context, weights = module(q, k, lengths=lengths)
        exact_context, exact_weights = module.double()(q.double(), k.double(), lengths=lengths)
    assert context.dtype == weights.dtype == torch.bfloat16
    assert (context.double() - exact_context).abs().max() < 5e-2
    assert (weights.double() - exact_weights).abs().max() < 2e-2


@pytest.mark.parametrize("name", ["lstm", "gru", "attention"])
def test_backward_inside_autocast_computes_as_its_forward(backend, name):
    """``loss.backward()`` inside a ``torch.autocast`` region, after an fp32 forward outside
    it: the gradients are the fp32 ones (as torch.nn's), not recomputed in bf16 by the
    GEMMs the backward runs."""
    if name == "attention":  # the fused op itself (a module's nn.Linear is torch's business)
        v = randn(12, requires_grad=True)
        module = lambda q, k: fused_rnn.functional.attention(q, k, score="additive", v=v)  # noqa: E731
        args = (randn(2, 3, 12, requires_grad=True), randn(2, 7, 12, requires_grad=True))
        leaves = [*args, v]
    else:
        module = MODULES[name][1](I, H)
        args = (randn(T, B, I, requires_grad=True),)
        leaves = [args[0], *module.parameters()]
    if backend == "reference":
        pytest.skip("reference is plain PyTorch autograd: its backward ops follow an enclosing "
                    "autocast, as any PyTorch code's do")
    grads = []
    for inside in (False, True):
        out = _outputs(module(*args))[0]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=inside):
            grads.append(torch.autograd.grad(out.sum(), leaves))
    for a, b in zip(*grads):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)
