"""The cuda backend's multi-block whole-sequence recurrence (``csrc/include/fused_rnn/recurrence_grid.cuh``:
one cooperative launch for all steps, the hidden units split over several blocks, each with its
slice of W_hh in shared memory, a grid barrier per step), checked against the reference through
the same grids as the per-step loop and the single-block path.

On CPU tensors the binding runs the kernels' per-block step bodies as a host "grid": for each
step every block's step (one host thread as a whole block), then the next step. Its budget
there is at most 3 blocks and chunks of 2 batch rows, so the layers here split H over several
blocks with a partial last one (the per-layer grid's H = 7: 3, 3, 1 units; H = 13: 5, 5, 3)
and their batches span several chunks. ``FUSED_RNN_CUDA_SEQUENCE=grid`` forces the path: a
layer it did not take would fail loudly. Layers with a projection are the per-step loop's.
"""

import pytest
import torch

import test_sequence_recurrence as single_block
from fused_rnn import _native, backends
from fused_rnn.ops.recurrence import reference, stepwise
from fused_rnn.ops.recurrence.cells import GATES, GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights
from fused_rnn.ops.recurrence.function import recurrence_layer
from fused_rnn.testing import assert_close, randn
from test_sequence_recurrence import MODES, NO_PROJ, make_args


@pytest.fixture(autouse=True)
def _multi_block(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "grid")


def _plan(mode, x, w_hh, w_hr=None):
    """[rows, units, blocks] of the loop the ops take for this layer ([0, 0, 0]: per step;
    units 0: single-block)."""
    assert _native.load_error() is None, _native.load_error()
    return list(torch.ops.fused_rnn.stepwise_sequence_plan(MODES[mode], x, w_hh, w_hr))


# ---------------------------------------------------------------- the grids, multi-block

@pytest.mark.parametrize("mode", [LSTM, GRU, RNN_TANH, RNN_RELU])
def test_the_grids_take_the_multi_block_path(mode):
    """The per-layer grid's layers (H = 7, B = 3) run on 3 blocks of 3, 3, 1 units, chunks of
    2 rows; the module grid's (H = 6) on 3 blocks of 2."""
    x, h0, c0, w, _ = make_args(mode, False, 0, True)
    assert _plan(mode, x, w.w_hh) == [2, 3, 3]
    assert _plan(mode, torch.zeros(5, 3, 4), torch.zeros(GATES[mode] * 6, 6)) == [2, 2, 3]


@pytest.mark.parametrize("device,dt", single_block.stepwise_tests.DEVICE_DTYPES)
@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", NO_PROJ)
def test_layer_matches_the_reference(device, dt, mode, reverse, lengths, proj, bias):
    single_block.test_layer_matches_the_reference(device, dt, mode, reverse, lengths, proj, bias)


@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", [c for c in NO_PROJ if c.values[4]])
def test_gradcheck_float64(cuda_host, mode, reverse, lengths, proj, bias):
    single_block.test_gradcheck_float64(cuda_host, mode, reverse, lengths, proj, bias)


@pytest.mark.parametrize("mode", [LSTM, GRU, RNN_TANH, RNN_RELU])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_zero_lengths_and_a_partial_last_block(mode, reverse, dtype, bias):
    """H = 13 over 3 blocks (5, 5, 3 units), five rows (chunks of 2, 2, 1), one of them
    empty, one full, in and out of order: outputs and every gradient against the reference."""
    T, B, I, H = 5, 5, 3, 13
    G = GATES[mode]
    rtol, atol = backends.get_backend("cuda").tolerances[dtype]
    x = randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = randn(B, H, dtype=dtype, requires_grad=True)
    c0 = randn(B, H, dtype=dtype, requires_grad=True) if mode == LSTM else None
    mk = lambda *s: randn(*s, dtype=dtype, requires_grad=True, scale=0.5)  # noqa: E731
    w = LayerWeights(mk(G * H, I), mk(G * H, H), mk(G * H) if bias else None,
                     mk(G * H) if bias else None, None)
    lens = torch.tensor([3, 0, T, 1, 4])
    assert _plan(mode, x, w.w_hh) == [2, 5, 3]
    got = [o for o in recurrence_layer(stepwise, mode, reverse, x, h0, c0, w, lens) if o is not None]
    leaves = [t for t in (x, h0, c0, *w) if t is not None]
    ref_in = [t.detach().double().requires_grad_() for t in leaves]
    rx, rh0 = ref_in[0], ref_in[1]
    rc0 = ref_in[2] if c0 is not None else None
    rest = ref_in[2 + (c0 is not None):]
    rw = LayerWeights(rest[0], rest[1], *(rest[2:] if bias else (None, None)), None)
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
    single_block.test_second_backward_recomputes_the_spent_activations(cuda_host)


def test_inference_saves_nothing(cuda_host):
    single_block.test_inference_saves_nothing(cuda_host)


@pytest.mark.parametrize("mode,form,dt", list(single_block._module_grid()))
def test_module_matches_torch(cuda_host, mode, form, dt):
    """Two layers, both directions, padded and packed: the modules' grid, multi-block."""
    single_block.test_module_matches_torch(cuda_host, mode, form, dt)


# ---------------------------------------------------------------- which path, and why not

def test_the_plan_takes_the_multi_block_path_only_when_asked(monkeypatch):
    """On CPU tensors (sm_80's 163 KiB, at most 3 blocks, 2 rows). Unforced: single-block
    while W_hh fits one block, else the per-step loop (the multi-block kernels wait for a
    GPU measurement against it). Forced (grid): multi-block while a third of W_hh fits."""
    monkeypatch.delenv("FUSED_RNN_CUDA_SEQUENCE")
    x = torch.zeros(4, 3, 5)
    assert _plan(LSTM, x, torch.zeros(4 * 100, 100)) == [2, 0, 2]      # single-block, 2 tiles
    assert _plan(LSTM, x, torch.zeros(4 * 102, 102)) == [0, 0, 0]      # per step, unforced
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "grid")
    assert _plan(LSTM, x, torch.zeros(4 * 102, 102)) == [2, 34, 3]     # 3 blocks of 34 units
    # The largest fp32 LSTM on 3 blocks: H = 174, 58 units a block, one row a chunk:
    # (4*174*58 + 1 * (4*174 + 58)) * 4 = 164 480 bytes; two rows at H = 173.
    assert _plan(LSTM, x, torch.zeros(4 * 173, 173)) == [2, 58, 3]
    assert _plan(LSTM, x, torch.zeros(4 * 174, 174)) == [1, 58, 3]
    with pytest.raises(RuntimeError, match="168236 bytes"):
        _plan(LSTM, x, torch.zeros(4 * 175, 175))
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "1")
    assert _plan(LSTM, x, torch.zeros(4 * 8, 8)) == [2, 0, 2]
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "0")
    assert _plan(LSTM, x, torch.zeros(4 * 102, 102)) == [0, 0, 0]
    monkeypatch.delenv("FUSED_RNN_CUDA_SEQUENCE")
    assert _plan(LSTM, x, torch.zeros(4 * 8, 4), torch.zeros(4, 8)) == [0, 0, 0]  # projection


def test_a_forced_path_that_does_not_fit_is_an_error():
    x, h0, c0, w, _ = single_block.make_args(LSTM, False, 4, True)
    args = [t.detach() for t in (x, h0, c0, *w)]
    with pytest.raises(RuntimeError, match=r"FUSED_RNN_CUDA_SEQUENCE=grid, but .*projection"):
        torch.ops.fused_rnn.stepwise_recurrence_forward(0, False, *args[:3], None, *args[3:], True)
    with pytest.raises(RuntimeError, match=r"H = 600 over at most 3 resident blocks is 200 units a "
                                           r"block, whose slice of W_hh and one batch row need "
                                           r"1930400 bytes of shared memory, the device gives a "
                                           r"block at most 166912"):
        _plan(LSTM, torch.zeros(2, 1, 3), torch.zeros(4 * 600, 600))


def test_a_bad_setting_names_the_accepted_values(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "2")
    with pytest.raises(RuntimeError, match=r"must be 0 \(per-step loop\), 1 \(single-block "
                                           r"whole-sequence kernels\), grid \(multi-block "
                                           r"whole-sequence kernels\) or unset \(choose\), got '2'"):
        _plan(LSTM, torch.zeros(2, 1, 3), torch.zeros(4 * 8, 8))
