"""Determinism: under ``torch.use_deterministic_algorithms(True)`` every backend runs (no
op refuses) and two runs give bit-identical outputs and gradients; the cpu backend gives
bit-identical results whatever the number of threads.

No backend uses atomics (the Triton kernels own their outputs, the C++ kernels split work
so that no two threads add into one value), so there is no nondeterministic path to switch
off. Deterministic mode also fills ``torch.empty`` with NaN, so a kernel reading memory it
never wrote would show here as a NaN.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn.functional import attention
from fused_rnn import testing


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _recurrence(backend, T=5, B=4, I=6, H=8, seed=0):
    """Outputs and every gradient of a bidirectional LSTM with projection over
    packed rows of unequal lengths, and of a GRU."""
    torch.manual_seed(seed)
    layers = 1 if backend == "triton" else 2  # the interpreter: ~1 s per layer and run
    lstm = fused_rnn.LSTM(I, H, num_layers=layers, bidirectional=True, proj_size=3)
    gru = fused_rnn.GRU(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    with fused_rnn.use_backend(backend):
        out, (h, c) = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
        g_out, g_h = gru(x)
    tensors = [out.data, h, c, g_out, g_h]
    loss = sum((t * torch.randn_like(t)).sum() for t in tensors)
    params = list(lstm.parameters()) + list(gru.parameters())
    return tensors + list(torch.autograd.grad(loss, [x] + params))


def _attention(backend, B=3, Tq=4, Tk=9, D=8, seed=0):
    torch.manual_seed(seed)
    out = []
    for score in ("dot", "additive"):
        q = torch.randn(B, Tq, D, requires_grad=True)
        k = torch.randn(B, Tk, D, requires_grad=True)
        v = torch.randn(D, requires_grad=True) if score == "additive" else None
        mask = torch.rand(B, Tk) < 0.7
        mask[:, 0] = True
        with fused_rnn.use_backend(backend):
            ctx, w = attention(q, k, score=score, mask=mask, v=v)
        loss = (ctx * torch.randn_like(ctx)).sum() + (w * torch.randn_like(w)).sum()
        out += [ctx, w] + list(torch.autograd.grad(loss, [t for t in (q, k, v) if t is not None]))
    return out


def _assert_identical(first, second, what):
    assert len(first) == len(second)
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"{what}: tensor {i} differs between runs"
        assert not a.isnan().any(), f"{what}: tensor {i} has NaN (read of unwritten memory?)"


@pytest.mark.parametrize("op", [_recurrence, _attention], ids=["recurrence", "attention"])
def test_deterministic_mode_runs_and_reruns_bit_identical(backend, deterministic, op):
    _assert_identical(op(backend), op(backend), f"{backend} {op.__name__}")


CPU_LIKE = [b for b in testing.testable_backends() if b == "cpu"]


@pytest.mark.parametrize("backend", CPU_LIKE)
def test_results_do_not_depend_on_the_thread_count(backend, restore_threads):
    # Sizes past the kernels' parallel grain, so that two threads really split the work:
    # the additive attention backward once kept one part of dv per thread (last bits
    # differed between 1 and 2 threads).
    def run():
        return (_recurrence(backend, T=20, B=48, I=64, H=64)
                + _attention(backend, B=8, Tq=6, Tk=200, D=64))

    torch.set_num_threads(1)
    one = run()
    torch.set_num_threads(2)
    two = run()
    _assert_identical(one, two, f"{backend}: 1 vs 2 threads")
