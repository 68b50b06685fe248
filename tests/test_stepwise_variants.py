"""The cuda backend's variant recurrences (``fused_rnn.ops.variants.stepwise``: LayerNorm
LSTM/GRU and zoneout as a GEMM per step and the fused row step of
``csrc/include/fused_rnn/variant_row.cuh``), checked against the reference.

On CPU tensors the ops run the kernels' row bodies on host threads (a one-thread block), so
without a GPU everything but the launch and the barriers is exercised: the loops, the
input side's layer norm, the saved layout, the gate gradients written over the saved
activations, the reverse rows' order. The grids of test_variants_backends.py and
test_variants_modules.py run through the ``cuda_host`` backend of conftest.py; where the
cuda backend is available (a GPU and a CUDA build) the per-layer grid runs on CUDA tensors
too, in half precision as well.
"""

import pytest
import torch

from fused_rnn import backends
from fused_rnn.ops.recurrence.cells import GRU, LSTM
from fused_rnn.ops.variants import stepwise
from fused_rnn.ops.variants.layout import VariantWeights

import test_variants_backends as per_layer
import test_variants_modules as modules

ON_CUDA = "cuda" in backends.available_backends()
MODES = [LSTM, GRU]
LN = pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("mode", MODES)
@LN
@pytest.mark.parametrize("zoneout", [None, "train", "eval"], ids=["nozone", "zone_train", "zone_eval"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_matches_reference(cuda_host, dtype, mode, layer_norm, zoneout, ragged, reverse):
    per_layer.test_matches_reference(cuda_host, dtype, mode, layer_norm, zoneout, ragged, reverse)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("mode", MODES)
@LN
@pytest.mark.parametrize("shape", list(per_layer.SHAPES))
def test_shapes(cuda_host, dtype, mode, layer_norm, shape):
    per_layer.test_shapes(cuda_host, dtype, mode, layer_norm, shape)


@pytest.mark.parametrize("mode", MODES)
@LN
def test_without_biases(cuda_host, mode, layer_norm):
    per_layer.test_without_biases(cuda_host, mode, layer_norm)


@pytest.mark.parametrize("mode", MODES)
def test_inference_outputs_match_training_outputs(cuda_host, mode):
    per_layer.test_inference_outputs_match_training_outputs(cuda_host, mode)


@pytest.mark.parametrize("mode,layer_norm,zoneout,ragged,reverse", [
    (LSTM, True, "eval", True, True), (LSTM, True, "train", False, False),
    (GRU, True, "eval", True, False), (GRU, True, None, False, True),
    (LSTM, False, "train", True, False), (GRU, False, "eval", False, True)], ids=str)
def test_gradcheck_fp64(cuda_host, mode, layer_norm, zoneout, ragged, reverse):
    per_layer.test_gradcheck_fp64(cuda_host, mode, layer_norm, zoneout, ragged, reverse)


@pytest.mark.parametrize("cls,layers,bidir,bf,p", modules.MODULE_CASES)
def test_module_matches_paper_in_training(cuda_host, cls, layers, bidir, bf, p):
    with backends.use_backend(cuda_host):
        modules.test_module_matches_paper_in_training(cuda_host, cls, layers, bidir, bf, p)


@pytest.mark.parametrize("cls", ("LayerNormLSTM", "LayerNormGRU"))
def test_packed_sequence_with_unsorted_lengths(cuda_host, cls):
    with backends.use_backend(cuda_host):
        modules.test_packed_sequence_with_unsorted_lengths(cuda_host, cls)


def test_second_backward_recomputes_the_spent_activations(cuda_host):
    """Backward writes the LSTM gate gradients over the saved activations: a second backward
    through a retained graph must get them anew (the Function reruns the forward)."""
    case = per_layer.make_case(LSTM, True, "train", True)
    leaves = [t.clone().requires_grad_() for t in (case["x"], case["h0"], case["c0"])]
    w = VariantWeights(*(None if t is None else t.clone().requires_grad_() for t in case["w"]))
    from fused_rnn.ops.recurrence.function import LayerFunction

    y, h_n, c_n = LayerFunction.apply(stepwise, LSTM, True, VariantWeights, 2, *leaves,
                                      case["lengths"], case["keep_h"], case["keep_c"], *w)
    loss = (y * case["grads"][0]).sum() + (h_n * case["grads"][1]).sum() + c_n.sum()
    params = leaves + [t for t in w if t is not None]
    first = torch.autograd.grad(loss, params, retain_graph=True)
    second = torch.autograd.grad(loss, params)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- on a GPU

CUDA_DTYPES = [pytest.param(d, id=n, marks=pytest.mark.skipif(
    not ON_CUDA, reason=f"cuda backend: {backends.backend_report()['cuda']}"))
    for n, d in (("fp64", torch.float64), ("fp32", torch.float32), ("fp16", torch.float16),
                 ("bf16", torch.bfloat16))]


def _on_cuda(case):
    moved = {}
    for k, v in case.items():
        if isinstance(v, torch.Tensor) and k != "lengths":  # lengths stay on the CPU
            moved[k] = v.cuda()
        elif isinstance(v, tuple):
            moved[k] = type(v)(*(None if t is None else t.cuda() for t in v)) if hasattr(
                v, "_fields") else tuple(None if t is None else t.cuda() for t in v)
        else:
            moved[k] = v
    return moved


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@LN
@pytest.mark.parametrize("zoneout", [None, "train"], ids=["nozone", "zone_train"])
@pytest.mark.parametrize("ragged,reverse", [(False, False), (True, True)], ids=["full", "ragged_rev"])
def test_cuda_matches_reference(dtype, mode, layer_norm, zoneout, ragged, reverse):
    for shape in ({}, dict(T=5, B=37, I=20, H=300)):  # H past one block's 256 threads
        case = _on_cuda(per_layer.make_case(mode, layer_norm, zoneout, ragged, **shape))
        per_layer.check("cuda", mode, reverse, case, dtype)


# ---------------------------------------------------------------- the op's own checks

def test_bad_arguments_are_named():
    case = per_layer.make_case(LSTM, True, "train", False)
    ops = torch.ops.fused_rnn
    x, h0, c0, w = case["x"], case["h0"], case["c0"], case["w"]
    keeps = (case["keep_h"], case["keep_c"])
    with pytest.raises(RuntimeError, match="the cuda backend's ops take float32 or float64"):
        ops.stepwise_variant_forward(0, False, x.half(), h0.half(), c0.half(), None,
                                     *(t.half() for t in w), *(k.half() for k in keeps), True)
    with pytest.raises(RuntimeError, match=r"ln_c_weight must have shape \[13\]"):
        ops.stepwise_variant_forward(0, False, x, h0, c0, None, *w[:6], w.ln_c_weight[:3],
                                     w.ln_c_bias, *keeps, True)
    y, h_n, c_n, saved = ops.stepwise_variant_forward(0, False, x, h0, c0, None, *w, *keeps, True)
    bad = list(saved)
    bad[3] = bad[3].float()  # ct of an fp64 call is fp64
    with pytest.raises(RuntimeError, match=r"saved\[ct\] must be a contiguous Double tensor"):
        ops.stepwise_variant_backward(0, False, x, h0, c0, None, *w, *keeps, bad,
                                      torch.randn_like(y), None, None)
    with pytest.raises(RuntimeError, match="saved must hold the 10 tensors"):
        ops.stepwise_variant_backward(0, False, x, h0, c0, None, *w, *keeps, saved[:4],
                                      torch.randn_like(y), None, None)


@pytest.mark.parametrize("mode", MODES)
@LN
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_saved_like_is_what_forward_saves(mode, layer_norm, dtype):
    """torch.compile's fake kernels take the saved layout from saved_like."""
    case = per_layer.make_case(mode, layer_norm, "train", True)
    c = {k: per_layer._cast(v, dtype) for k, v in case.items()}
    args = (mode, True, c["x"], c["h0"], c["c0"], c["w"], c["lengths"], c["keep_h"], c["keep_c"])
    real, like = stepwise._fwd(*args)[3], stepwise.saved_like(*args)
    assert [(t.shape, t.dtype) for t in like] == [(t.shape, t.dtype) for t in real]


@pytest.mark.parametrize("op", ["variant", "recurrence"])
def test_the_ops_ignore_an_enclosing_autocast(op):
    """A backward may run under autocast: the loops' own GEMMs must still return x's dtype
    (the kernels read their results as x's), so the ops run with autocast off."""
    ops = torch.ops.fused_rnn
    case = per_layer.make_case(LSTM, True, "train", True)
    x, h0, c0 = (case[k].float() for k in ("x", "h0", "c0"))
    w = [t.float() for t in case["w"]]
    if op == "variant":
        run = lambda: ops.stepwise_variant_forward(0, False, x, h0, c0, None, *w, None, None, False)  # noqa: E731
    else:
        run = lambda: ops.stepwise_recurrence_forward(0, False, x, h0, c0, None, *w[:4], None, False)  # noqa: E731
    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = run()
    for a, b in zip(plain[:3], under[:3]):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)
