"""The cpu backend's GEMMs over all steps at sizes the parity grid never reaches: from 256
rows (T*B, or a chunk's active rows with lengths) dx and the forward's input projection
(where it is one GEMM: test_cpu_backend.py reruns this file with it forced) go through the
step kernels' tiles (threads taking panels of the output's columns, or ranges of rows when
it is narrower than a panel per thread: I=24 is one panel of 32 float64 units) instead of
at::mm; dW_ih and dW_hh always do. Outputs and every gradient against autograd through the
reference forward."""

import pytest
import torch

from fused_rnn import _native
from fused_rnn.ops.recurrence.cells import GATES, GRU, LSTM, RNN_TANH, LayerWeights
from fused_rnn.testing import randn, random_lengths

import test_recurrence_function as per_layer

pytestmark = pytest.mark.skipif(_native.cpu_available() is not None,
                                reason=f"the cpu backend is not built here: {_native.cpu_available()}")

# 320 rows; with lengths twice the steps, of which about half are active (~330 rows).
T, B, H = 20, 16, 24
DT = torch.float64


@pytest.mark.parametrize("I", [24, 200], ids=["narrow-rows-split", "panels-with-tail"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", [LSTM, GRU, RNN_TANH])
def test_every_gradient_matches_reference(mode, reverse, lengths, I):
    torch.manual_seed(0)
    G = GATES[mode]
    steps = 2 * T if lengths else T  # keeps the active rows above the tiles' threshold
    x = randn(steps, B, I, dtype=DT, requires_grad=True)
    h0 = randn(B, H, dtype=DT, requires_grad=True)
    c0 = randn(B, H, dtype=DT, requires_grad=True) if mode == LSTM else None
    mk = lambda *s: randn(*s, dtype=DT, requires_grad=True, scale=0.5)  # noqa: E731
    w = LayerWeights(mk(G * H, I), mk(G * H, H), mk(G * H), mk(G * H), None)
    lens = random_lengths(B, steps) if lengths else None
    per_layer.check_against_reference("cpu", mode, reverse, x, h0, c0, w, lens, tol=(1e-10, 1e-10))


@pytest.mark.parametrize("mode", [LSTM, GRU])
def test_pooled_weight_gradients_are_written_not_added_to(mode):
    """Weight-gradient blocks of 32 MiB and more come back from a pool (csrc/cpu/
    gradient_pool.cpp) holding the last backward's numbers, where fresh memory from the
    kernel is zero: the second backward must match the reference as the first did."""
    torch.manual_seed(0)
    G, I, Hb = GATES[mode], 512, 1024 if mode == LSTM else 1366  # G*H*(I+H)*8 bytes >= 32 MiB
    x = randn(3, 2, I, dtype=DT, requires_grad=True)
    h0 = randn(2, Hb, dtype=DT, requires_grad=True)
    c0 = randn(2, Hb, dtype=DT, requires_grad=True) if mode == LSTM else None
    mk = lambda *s: randn(*s, dtype=DT, requires_grad=True, scale=0.05)  # noqa: E731
    w = LayerWeights(mk(G * Hb, I), mk(G * Hb, Hb), mk(G * Hb), mk(G * Hb), None)
    assert G * Hb * (I + Hb) * 8 >= 32 << 20
    for _ in range(2):
        per_layer.check_against_reference("cpu", mode, False, x, h0, c0, w, None, tol=(1e-10, 1e-10))
