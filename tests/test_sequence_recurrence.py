"""The cuda backend's whole-sequence recurrence (``csrc/include/fused_rnn/recurrence_sequence.cuh``:
one launch for all steps, a block per batch tile, W_hh in shared memory), checked against the
reference through the same grid as the per-step loop (tests/test_stepwise_recurrence.py).

On CPU tensors the binding runs the kernels' tile bodies on host threads (one thread as the
whole block, two batch rows a tile, so the batches here span several tiles and the last one
is partial). ``FUSED_RNN_CUDA_SEQUENCE=1`` forces the path: a layer it did not take would fail
loudly instead of passing through the per-step loop. Layers with a projection are not the
path's (the per-step loop keeps them): their cases are left to the per-step tests.
"""

import pytest
import torch

import test_recurrence_function as per_layer
import test_recurrence_modules as modules
import test_stepwise_recurrence as stepwise_tests
from fused_rnn import _native, backends
from fused_rnn.ops.recurrence import reference, stepwise
from fused_rnn.ops.recurrence.cells import GATES, GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights
from fused_rnn.ops.recurrence.function import recurrence_layer
from fused_rnn.testing import assert_close, randn
from test_recurrence_function import CASES, make_args

NO_PROJ = [c for c in CASES if c.values[3] == 0]
MODES = {LSTM: 0, GRU: 1, RNN_TANH: 2, RNN_RELU: 3}  # the ops' mode numbers


@pytest.fixture(autouse=True)
def _whole_sequence(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "1")


def _rows(mode, x, w_hh, w_hr=None):
    """The rows per tile the ops take for this layer (0: the per-step loop)."""
    assert _native.load_error() is None, _native.load_error()
    return torch.ops.fused_rnn.stepwise_sequence_rows(MODES[mode], x, w_hh, w_hr)


@pytest.mark.parametrize("device,dt", stepwise_tests.DEVICE_DTYPES)
@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", NO_PROJ)
def test_layer_matches_the_reference(device, dt, mode, reverse, lengths, proj, bias):
    stepwise_tests.test_layer_matches_the_reference(device, dt, mode, reverse, lengths, proj, bias)


@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", [c for c in NO_PROJ if c.values[4]])
def test_gradcheck_float64(cuda_host, mode, reverse, lengths, proj, bias):
    per_layer.test_gradcheck_float64(cuda_host, mode, reverse, lengths, proj, bias)


@pytest.mark.parametrize("mode", [LSTM, GRU, RNN_TANH, RNN_RELU])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_zero_lengths_and_several_tiles(mode, reverse, dtype):
    """Five rows (tiles of 2, 2, 1), one of them empty, one full, in and out of order: outputs
    and every gradient against the reference."""
    T, B, I, H = 5, 5, 3, 6
    G = GATES[mode]
    rtol, atol = backends.get_backend("cuda").tolerances[dtype]
    x = randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = randn(B, H, dtype=dtype, requires_grad=True)
    c0 = randn(B, H, dtype=dtype, requires_grad=True) if mode == LSTM else None
    mk = lambda *s: randn(*s, dtype=dtype, requires_grad=True, scale=0.5)  # noqa: E731
    w = LayerWeights(mk(G * H, I), mk(G * H, H), mk(G * H), mk(G * H), None)
    lens = torch.tensor([3, 0, T, 1, 4])
    assert _rows(mode, x, w.w_hh) == 2
    got = [o for o in recurrence_layer(stepwise, mode, reverse, x, h0, c0, w, lens) if o is not None]
    leaves = [t for t in (x, h0, c0, *w) if t is not None]
    ref_in = [t.detach().double().requires_grad_() for t in leaves]
    rx, rh0 = ref_in[0], ref_in[1]
    rc0 = ref_in[2] if c0 is not None else None
    rw = LayerWeights(*ref_in[2 + (c0 is not None):], None)
    want = [o for o in reference._fwd(mode, reverse, rx, rh0, rc0, rw, lens, need_saved=False)[:3]
            if o is not None]
    for n, a, e in zip(("y", "h_n", "c_n"), got, want):
        assert_close(a.double(), e, rtol=rtol, atol=atol, name=n)
    assert torch.all(got[0][:, 1] == 0) and torch.all(got[0][1:, 3] == 0)
    ups = [torch.randn_like(e) for e in want]
    g_got = torch.autograd.grad(sum((o * u.to(dtype)).sum() for o, u in zip(got, ups)), leaves)
    g_want = torch.autograd.grad(sum((o * u).sum() for o, u in zip(want, ups)), ref_in)
    for k, (a, e) in enumerate(zip(g_got, g_want)):
        assert_close(a.double(), e, rtol=rtol, atol=atol, name=f"grad {k}")


def test_second_backward_recomputes_the_spent_activations(cuda_host):
    per_layer.test_second_backward_through_a_retained_graph_gives_the_same_gradients(
        cuda_host, LSTM)


def test_inference_saves_nothing(cuda_host):
    per_layer.test_inference_saves_nothing_for_backward(cuda_host)


def _module_grid():
    for mode in modules.MODES:
        for form in ("padded", "packed_unsorted"):
            for dt in modules.DTYPES:
                yield pytest.param(mode, form, dt, id=f"{mode}-{form}-{dt}")


@pytest.mark.parametrize("mode,form,dt", list(_module_grid()))
def test_module_matches_torch(cuda_host, mode, form, dt):
    """Two layers, both directions, padded and packed: the modules' grid, whole-sequence."""
    with backends.use_backend(cuda_host):
        modules.test_module_matches_torch(cuda_host, mode, 2, True, False, 0, form, dt)


# ---------------------------------------------------------------- which path, and why not

def test_the_path_is_chosen_where_it_fits(monkeypatch):
    """The rows per tile the ops use: 2 on CPU tensors where it fits, 0 (the per-step loop)
    with a projection or when W_hh does not fit in sm_80's 163 KiB; forced either way by
    FUSED_RNN_CUDA_SEQUENCE."""
    x = torch.zeros(4, 3, 5)
    monkeypatch.delenv("FUSED_RNN_CUDA_SEQUENCE")
    assert _rows(LSTM, x, torch.zeros(4 * 100, 100)) == 2          # 160 000 + 2 * 2 000 bytes
    assert _rows(LSTM, x, torch.zeros(4 * 101, 101)) == 1          # two rows no longer fit
    assert _rows(LSTM, x, torch.zeros(4 * 102, 102)) == 0
    assert _rows(RNN_TANH, x, torch.zeros(200, 200)) == 2
    assert _rows(LSTM, x.double(), torch.zeros(4 * 72, 72).double()) == 0
    assert _rows(LSTM, x, torch.zeros(4 * 8, 4), torch.zeros(4, 8)) == 0  # projection
    assert _rows(GRU, x[:, :1], torch.zeros(3 * 8, 8)) == 1        # B = 1: one row a tile
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "0")
    assert _rows(LSTM, x, torch.zeros(4 * 8, 8)) == 0


def test_a_forced_path_that_does_not_fit_is_an_error():
    x, h0, c0, w, _ = make_args(LSTM, False, 4, True)
    args = [t.detach() for t in (x, h0, c0, *w)]
    with pytest.raises(RuntimeError, match=r"FUSED_RNN_CUDA_SEQUENCE=1, but .*projection"):
        torch.ops.fused_rnn.stepwise_recurrence_forward(0, False, *args[:3], None, *args[3:], True)
    with pytest.raises(RuntimeError, match=r"needs 644000 bytes of shared memory, the device "
                                           r"gives a block at most 166912"):
        _rows(LSTM, torch.zeros(2, 1, 3), torch.zeros(4 * 200, 200))


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "yes")
    with pytest.raises(RuntimeError, match=r"FUSED_RNN_CUDA_SEQUENCE must be 0 .* got 'yes'"):
        _rows(LSTM, torch.zeros(2, 1, 3), torch.zeros(4 * 8, 8))
