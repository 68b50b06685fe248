"""Buffers that scale with a sequence (csrc/cpu/sequence_buffers.cpp): from 32 MiB they lie
on 2 MiB-aligned memory advised for huge pages. Same numbers as torch.nn, seen by the
profiler, resizable as at::empty's are, switched off by FUSED_RNN_CPU_HUGE_PAGES=0, and a
long sequence's training step no longer faults them in a 4 KiB page at a time."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn import _native
from fused_rnn.testing import child_env, page_faults_per_call

pytestmark = pytest.mark.skipif(
    _native.cpu_available() is not None,
    reason=f"the cpu backend is not built here: {_native.cpu_available()}")

HUGE_PAGE = 2 << 20
# T*B*H*4 bytes = 32 MiB for y, dx and dy; the LSTM's activations 128 MiB.
T, B, I, H = 256, 128, 64, 256


def _forward_op(x, saves=1):
    torch.manual_seed(1)
    args = dict(mode=0, reverse=False, x=x, h0=torch.randn(B, H), c0=torch.randn(B, H),
                lengths=None, w_ih=torch.randn(4 * H, I) / 16, w_hh=torch.randn(4 * H, H) / 16,
                b_ih=torch.randn(4 * H), b_hh=torch.randn(4 * H), w_hr=None, saves=saves)
    return torch.ops.fused_rnn.recurrence_forward(*args.values())


def test_outputs_and_saved_activations_are_huge_page_aligned():
    y, _, _, saved = _forward_op(torch.randn(T, B, I))
    assert y.shape == (T, B, H)
    assert y.data_ptr() % HUGE_PAGE == 0
    acts = saved[0]
    assert acts.shape == (T, B, 4 * H) and acts.data_ptr() % HUGE_PAGE == 0


def test_small_buffers_stay_with_aten():
    """Below 32 MiB glibc's heap keeps freed memory for the next call: no reason to map."""
    y, _, _, saved = _forward_op(torch.randn(4, B, I))
    assert y.data_ptr() % HUGE_PAGE != 0 or saved[0].data_ptr() % HUGE_PAGE != 0


def test_an_output_resizes_like_torch_nn_s():
    y, _, _, _ = _forward_op(torch.randn(T, B, I))
    first = y[0].clone()
    assert y.untyped_storage().resizable()
    y.resize_(T + 8, B, H)
    assert torch.equal(y[0], first)
    y.resize_(2, B, H)
    assert torch.equal(y[0], first)


def test_an_output_saves_loads_and_moves_to_shared_memory():
    import io

    y, _, _, _ = _forward_op(torch.randn(T, B, I))
    want = y.clone()
    buf = io.BytesIO()
    torch.save(y, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), want)
    y.share_memory_()  # what a DataLoader worker does with what it returns
    assert y.is_shared() and torch.equal(y, want)


@pytest.mark.parametrize("cls, bidirectional, packed", [
    (torch.nn.LSTM, False, False), (torch.nn.GRU, False, False),
    (torch.nn.LSTM, True, False), (torch.nn.GRU, True, True)])
def test_a_long_sequence_gives_torch_nn_numbers(cls, bidirectional, packed):
    """Every buffer above 32 MiB: y, dx, the activations, the copy of a broadcast dy, and
    the reverse direction's gathered inputs (and states, with lengths) for its sums."""
    torch.manual_seed(0)
    ref = cls(I, H, bidirectional=bidirectional)
    fused = getattr(fused_rnn, cls.__name__)(I, H, bidirectional=bidirectional)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    lengths = torch.randint(1, T + 1, (B,))  # half the rows' steps: the sums leave the rest out
    w = torch.randn(H * (2 if bidirectional else 1))  # broadcast: dy arrives as a strided view
    outs, grads = [], []
    for m in (ref, fused):
        inp = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        with fused_rnn.use_backend("cpu"):
            y, _ = m(inp)
        y = y.data if packed else y
        loss = (y * w).sum()
        grads.append(torch.autograd.grad(loss, [x] + list(m.parameters())))
        outs.append(y.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    # Weight gradients are sums over T*B = 32k rows: fp32's rounding there is relative to
    # the largest of them (both sides lie ~1e-3 from fp64 at |dW| ~3e3).
    for g_fused, g_ref, name in zip(grads[1], grads[0], ["x"] + [n for n, _ in ref.named_parameters()]):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=2e-6 * g_ref.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", ["LayerNormLSTM", "LayerNormGRU"])
def test_a_long_layer_norm_sequence_gives_the_reference_numbers(name):
    """The variants' projections and normalised products, 64 MiB at 64 steps of 256 rows.
    At its initial weights a LayerNormLSTM is chaotic (over 256 steps fp32 and fp64 runs of
    the reference part by 1.2); a small gain on the recurrent norm damps it."""
    torch.manual_seed(0)
    m = getattr(fused_rnn, name)(I, H)
    with torch.no_grad():
        m.layer_norm_hh_l0.uniform_(0.1, 0.3)
    x = torch.randn(64, 2 * B, I, requires_grad=True)
    w = torch.randn(H)
    results = []
    for backend in ("reference", "cpu"):
        with fused_rnn.use_backend(backend):
            y, _ = m(x)
        grads = torch.autograd.grad((y * w).sum(), [x] + list(m.parameters()))
        results.append((y.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for g_cpu, g_ref in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g_cpu, g_ref, rtol=1e-4, atol=2e-3)


def test_the_profiler_sees_them():
    """They bypass ATen's allocator; benchmarks/measure.py's peak must still count them."""
    from benchmarks.measure import peak_mib

    x = torch.randn(T, B, I)
    peak = peak_mib(lambda: _forward_op(x), torch.device("cpu"))
    # y 32 MiB, activations 128, cells 32 + a row
    assert 190 < peak < 200, f"peak {peak:.1f} MiB"


_ALIGNED = """
import torch, fused_rnn, tests.test_sequence_buffers as t
y, _, _, _ = t._forward_op(torch.randn(t.T, t.B, t.I))
print(y.data_ptr() % t.HUGE_PAGE == 0)
"""


def test_the_switch_leaves_every_buffer_to_aten():
    for value, aligned in (("0", "False"), ("1", "True")):
        env = dict(child_env(), FUSED_RNN_CPU_HUGE_PAGES=value)
        r = subprocess.run([sys.executable, "-c", _ALIGNED], capture_output=True, text=True,
                           env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[-1] == aligned, (value, r.stdout)


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


_LONG_LSTM = f"""
torch.manual_seed(0)
m = fused_rnn.LSTM({I}, {H})
x = torch.randn({T}, {B}, {I}, requires_grad=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts Linux's page faults")
@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"),
                    reason=f"transparent huge pages are {_thp_mode()} here")
def test_a_long_sequence_step_does_not_fault_its_buffers_in_page_by_page():
    # Mapped per call (above 32 MiB): y, dx, dy's copy (32 MiB each) and the activations
    # (128 MiB), 57,344 pages of 4 KiB. Measured: 58k-59k faults per step with
    # FUSED_RNN_CPU_HUGE_PAGES=0, 0.8k-2.3k with huge pages (3 fresh processes each).
    pages = (3 * 32 + 128) * 2 ** 20 // os.sysconf("SC_PAGE_SIZE")
    faults = page_faults_per_call(_LONG_LSTM, "m(x)[0].sum().backward()", warmup=2, runs=3)
    assert faults < 0.1 * pages, f"{faults:.0f} page faults per step, of {pages} pages"
