"""torch.compile(fullgraph=True) of the variant modules (LayerNorm LSTM/GRU, zoneout): no
graph break, the eager module's outputs and gradients; and each backend's ``saved_like``
(the custom op's fake kernel) agrees with what its forward really saves."""

import pytest
import torch

import fused_rnn
from fused_rnn import backends, testing
from fused_rnn.ops.recurrence.cells import GATES, LSTM
from fused_rnn.ops.variants.layout import VariantWeights
from fused_rnn.testing import assert_close, randn, tolerance

T, I, H = 5, 4, 6
VARIANT_BACKENDS = [b for b in testing.testable_backends()
                    if "variants" in backends.get_backend(b).modules]
# Interpreted triton under compile adds minutes and no path of ours.
COMPILE_BACKENDS = [b for b in VARIANT_BACKENDS if b != "triton"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # the backend is chosen once per compilation
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend_name", VARIANT_BACKENDS)
@pytest.mark.parametrize("batch", [3, 0])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("zoneout", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saved_like_matches_the_forward(backend_name, mode, layer_norm, zoneout, with_lengths,
                                        reverse, batch, dtype):
    if backend_name == "triton" and (dtype == torch.float32 or batch == 0):
        pytest.skip("triton interpreter budget: the fp64 non-empty cases hold every layout")
    ops = backends.get_backend(backend_name).ops("variants")
    G = GATES[mode]
    ln = (randn(G * H, dtype=dtype), randn(G * H, dtype=dtype)) if layer_norm else (None, None)
    lnc = ((randn(H, dtype=dtype), randn(H, dtype=dtype)) if layer_norm and mode == LSTM
           else (None, None))
    w = VariantWeights(randn(G * H, I, dtype=dtype), randn(G * H, H, dtype=dtype),
                       randn(G * H, dtype=dtype), randn(G * H, dtype=dtype), *ln, *lnc)
    x, h0 = randn(T, batch, I, dtype=dtype), randn(batch, H, dtype=dtype)
    c0 = randn(batch, H, dtype=dtype) if mode == LSTM else None
    lengths = torch.randint(1, T + 1, (batch,)) if with_lengths else None
    keep_h = torch.bernoulli(torch.full((T, batch, H), 0.3, dtype=dtype)) if zoneout else None
    keep_c = keep_h if zoneout and mode == LSTM else None
    saved = ops._fwd(mode, reverse, x, h0, c0, w, lengths, keep_h, keep_c, need_saved=True)[3]
    like = ops.saved_like(mode, reverse, x, h0, c0, w, lengths, keep_h, keep_c)
    assert [(tuple(t.shape), t.dtype) for t in like] == [(tuple(t.shape), t.dtype) for t in saved]


MODULES = {
    "LayerNormLSTM": lambda: fused_rnn.LayerNormLSTM(I, H, num_layers=2, bidirectional=True),
    "LayerNormGRU": lambda: fused_rnn.LayerNormGRU(I, H, batch_first=True),
    "LSTM-zoneout": lambda: fused_rnn.LSTM(I, H, zoneout=0.3),
    "GRU-zoneout-heads": lambda: fused_rnn.GRU(I, H, zoneout=0.3, num_heads=2,
                                               recurrent_dropout=0.2),
    "LSTM-heads": lambda: fused_rnn.LSTM(I, H, num_heads=2, bidirectional=True),
}


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("backend_name", COMPILE_BACKENDS)
def test_compiled_module_matches_eager(backend_name, name, compiler):
    """Evaluation mode (zoneout keeps = p, no DropConnect: no random draw, whose stream
    compilation may change), outputs and gradients. (PackedSequence input does not compile:
    Dynamo refuses pad_packed_sequence, for torch.nn's modules too.)"""
    if compiler == "inductor" and (backend_name != COMPILE_BACKENDS[0] or name != "LayerNormLSTM"):
        pytest.skip("Inductor adds minutes of C++ compilation and no op of ours beyond "
                    "aot_eager's: one module, one backend")
    torch.manual_seed(0)
    m = MODULES[name]().double().eval()
    x = randn(T, 3, I, dtype=torch.float64, requires_grad=True)
    with fused_rnn.use_backend(backend_name):
        compiled = torch.compile(m, fullgraph=True, backend=compiler)
        eager, comp = m(x)[0], compiled(x)[0]
    rtol, atol = tolerance(backend_name, torch.float64)
    assert_close(comp, eager, rtol=rtol, atol=atol, name="output")
    g = torch.randn_like(eager)
    params = [x, *m.parameters()]
    for a, e, n in zip(torch.autograd.grad(comp, params, g), torch.autograd.grad(eager, params, g),
                       ["input"] + [n for n, _ in m.named_parameters()]):
        assert_close(a, e, rtol=rtol, atol=atol, name=f"grad {n}")
