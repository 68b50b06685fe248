"""Use from several Python threads at once (each thread's backend choice is its own, results
are those of a serial run) and no memory growth over many training steps."""

import os
import sys
import threading

import pytest
import torch

import fused_rnn
from fused_rnn.testing import page_faults_per_call


def _step(m, x):
    out, (h, c) = m(x)
    loss = out.square().sum() + h.sum() + c.sum()
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
    return [out.detach(), h.detach()] + list(grads)


# Triton's interpreter (triton on CPU in tests) patches triton.language while it runs a
# kernel, so two threads cannot interpret at once; compiled Triton on a GPU has no such limit.
INTERPRETED = {"triton"} if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else set()


def test_threads_get_serial_results_and_their_own_backend_choice():
    backends = [b for b in fused_rnn.available_backends() if b not in INTERPRETED]
    m = fused_rnn.LSTM(5, 8, num_layers=2, bidirectional=True).double()
    inputs = [torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True) for _ in range(8)]
    expected = []
    for k, x in enumerate(inputs):
        with fused_rnn.use_backend(backends[k % len(backends)]):
            expected.append(_step(m, x))
    results, errors = [None] * len(inputs), []

    def work(k):
        try:
            name = backends[k % len(backends)]
            with fused_rnn.use_backend(name):
                for _ in range(5):
                    assert fused_rnn.current_backend() == name
                    results[k] = _step(m, inputs[k])
        except Exception as e:  # noqa: BLE001 - reported below with its thread
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc to read RSS")
@pytest.mark.skipif("cpu" not in fused_rnn.available_backends(), reason="the cpu backend is not built")
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_cpu_backend_training_steps_do_not_grow_memory(mode):
    cls = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}[mode]
    m = cls(16, 32, batch_first=True)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    x = torch.randn(8, 20, 16)
    lengths = torch.randint(1, 21, (8,))

    def step():
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                         enforce_sorted=False)
        out, _ = m(packed)
        opt.zero_grad()
        out.data.square().mean().backward()
        opt.step()

    with fused_rnn.use_backend("cpu"):  # not auto: under TRITON_INTERPRET auto is the interpreter
        for _ in range(200):
            step()
        before = _rss_mib()
        for _ in range(1000):
            step()
        grown = _rss_mib() - before
    assert grown < 8, f"RSS grew by {grown:.1f} MiB over 1,000 training steps"


@pytest.mark.skipif("cpu" not in fused_rnn.available_backends(), reason="the cpu backend is not built")
def test_cpu_weight_gradients_of_a_call_are_one_block():
    # Two blocks freed together would be trimmed from glibc's heap at each backward (see
    # StepSums::allocate in csrc/cpu/recurrence.cpp); the test below measures the effect.
    m = fused_rnn.LSTMCell(6, 5)
    with fused_rnn.use_backend("cpu"):
        h, c = m(torch.randn(3, 6, requires_grad=True))
    (h.sum() + c.sum()).backward()
    assert m.weight_ih.grad.untyped_storage().data_ptr() == m.weight_hh.grad.untyped_storage().data_ptr()
    assert m.weight_ih.grad.data_ptr() != m.weight_hh.grad.data_ptr()


_CELL_LOOP = """
B, H = {B}, {H}
fused = fused_rnn.LSTMCell(H, H)
x = torch.randn(B, H, requires_grad=True)

def loop():
    state, outs = None, []
    for _ in range(10):
        state = fused(x, state)
        outs.append(state[0])
    sum(o.sum() for o in outs).backward()
    for p in fused.parameters():
        p.grad = None
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts glibc's page faults")
@pytest.mark.skipif("cpu" not in fused_rnn.available_backends(), reason="the cpu backend is not built")
@pytest.mark.parametrize("B,H", [(16, 512), (1, 1024)])
def test_cpu_cell_training_loop_does_not_fault_its_weight_gradients_back_in(B, H):
    # Fresh processes: what was freed before sets glibc's thresholds, and the counts vary
    # with the heap's layout, so the median of three. The loop's 10 calls write 10 blocks of
    # weight gradients (H=512: 8 MiB each, 20,480 pages in all; H=1024: 32 MiB, 81,920).
    # H=512 as two blocks faulted 4.5k-12.4k pages per loop (median 7.5k), as one block
    # 0.4k-3.5k (with MKL's small GEMMs; 1.4k-6.3k without them), pooled 0.3k-2.1k,
    # torch.nn's LSTMCell 1.3k-4.6k. H=1024 as one block (above glibc's largest mmap
    # threshold, so mapped per call) 65k-90k, as two 7k-69k, pooled 3.3k-7.8k, torch.nn
    # 15k-20k.
    pages = 10 * 2 * (4 * H * H * 4) // os.sysconf("SC_PAGE_SIZE")
    counts = [page_faults_per_call(_CELL_LOOP.format(B=B, H=H), "loop()", warmup=3, runs=10)
              for _ in range(3)]
    assert sorted(counts)[1] < 0.25 * pages, f"page faults per loop: {counts} of {pages} pages"


@pytest.mark.skipif("cpu" not in fused_rnn.available_backends(), reason="the cpu backend is not built")
def test_pooled_weight_gradients_count_in_the_profilers_memory():
    """Blocks from csrc/cpu/gradient_pool.cpp bypass ATen's allocator: the profiler (and
    so benchmarks/measure.py's peak) must still see them allocated and freed."""
    from benchmarks.measure import peak_mib

    H = 1024  # dW_ih and dW_hh: 32 MiB, pooled
    m = fused_rnn.LSTMCell(H, H)
    x = torch.randn(1, H, requires_grad=True)

    def step():
        h, c = m(x)
        (h.sum() + c.sum()).backward()
        for p in m.parameters():
            p.grad = None

    with fused_rnn.use_backend("cpu"):
        step()
        peak = peak_mib(step, torch.device("cpu"))
    assert peak >= 32, f"peak {peak:.1f} MiB: the 32 MiB gradient block is not seen"
    assert peak < 40, f"peak {peak:.1f} MiB"
