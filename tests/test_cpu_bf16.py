"""The cpu backend's bf16 recurrence. On CPUs with AVX512-BF16 its forward multiplies bf16
pairs (x, the weights and the state, rounded to bf16 at every step, with fp32 accumulation)
and its backward's sums over steps (dx, dW_ih, dW_hh) are bf16 GEMMs; elsewhere, and for
odd sizes, a projection or a single step, it computes in fp32 on widened inputs. Outputs and
every gradient against the fp64 reference run of the same bf16 inputs, every cell, both
directions, with lengths, and against torch.nn's bf16 error; the widened path reruns the
file in a child."""

import copy
import os
import subprocess
import sys

import pytest
import torch

import fused_rnn
from fused_rnn import _native, backends
from fused_rnn.ops.recurrence import reference
from fused_rnn.ops.recurrence.cells import GATES, GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights
from fused_rnn.ops.recurrence.function import recurrence_layer
from fused_rnn.testing import assert_close, child_env, randn

pytestmark = pytest.mark.skipif(_native.cpu_available() is not None,
                                reason=f"the cpu backend is not built here: {_native.cpu_available()}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, B = 20, 5
# bf16 rounding (x, weights, the state at every step, the saved activations, the results):
# a few bf16 ulps of each tensor's largest element over 20 steps; the weight gradients sum
# 100 rows, so their tolerance scales with their size.
# A ReLU RNN's gradients differ more: an input near 0 rounded to the other side of the kink
# flips a unit's derivative (torch.nn's bf16 RNN(relu) errs as much: 0.14-1.19 on dx of size
# ~8 at these sizes, measured over 5 seeds).
RTOL, ATOL, ATOL_RELU_GRAD = 3e-2, 3e-2, 0.15


def _close(a, e, name, atol=ATOL):
    assert_close(a.double(), e, rtol=RTOL, atol=atol * max(1.0, e.abs().max().item()), name=name)


def _args(mode, I, H, lengths, proj=0):
    G, P = GATES[mode], proj or H
    bf = lambda *s, scale=1.0: randn(*s, scale=scale).bfloat16().requires_grad_(True)  # noqa: E731
    x, h0 = bf(T, B, I), bf(B, P)
    c0 = bf(B, H) if mode == LSTM else None
    ws = H ** -0.5  # torch.nn's init scale: a ReLU RNN neither explodes nor dies in 20 steps
    w = LayerWeights(bf(G * H, I, scale=ws), bf(G * H, P, scale=ws), bf(G * H, scale=ws),
                     bf(G * H, scale=ws), bf(P, H, scale=ws) if proj else None)
    lens = torch.tensor([T, 3, 11, 1, 20]) if lengths else None
    return x, h0, c0, w, lens


def _fp64(*tensors):
    return [None if t is None else t.detach().double().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("I,H,proj", [(16, 24, 0), (15, 24, 0), (16, 23, 0), (16, 24, 6)],
                         ids=["pairs", "odd-input", "odd-hidden", "projection"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", [LSTM, GRU, RNN_TANH, RNN_RELU])
def test_bf16_matches_reference(mode, reverse, lengths, I, H, proj):
    if proj and mode != LSTM:
        pytest.skip("proj_size is LSTM's alone")
    torch.manual_seed(0)
    x, h0, c0, w, lens = _args(mode, I, H, lengths, proj)
    ops = backends.get_backend("cpu").ops("recurrence")
    outs = [o for o in recurrence_layer(ops, mode, reverse, x, h0, c0, w, lens) if o is not None]
    x64, h64, c64, *w64 = _fp64(x, h0, c0, *w)
    w64 = LayerWeights(*w64)
    routs = [o for o in reference._fwd(mode, reverse, x64, h64, c64, w64, lens,
                                       need_saved=False)[:3] if o is not None]
    for n, a, e in zip(("y", "h_n", "c_n"), outs, routs):
        assert a.dtype == torch.bfloat16
        _close(a, e, n)
    with torch.no_grad():
        plain = [o for o in recurrence_layer(ops, mode, reverse, x, h0, c0, w, lens) if o is not None]
    for n, a, e in zip(("y", "h_n", "c_n"), plain, outs):
        assert torch.equal(a, e), f"{n}: the forward without grad differs from the one with it"
    ups = [randn(*o.shape, dtype=torch.float64) for o in routs]
    leaves = [t for t in (x, h0, c0, *w) if t is not None]
    leaves64 = [t for t in (x64, h64, c64, *w64) if t is not None]
    got = torch.autograd.grad(sum((o.double() * u).sum() for o, u in zip(outs, ups)), leaves)
    want = torch.autograd.grad(sum((o * u).sum() for o, u in zip(routs, ups)), leaves64)
    for i, (a, e) in enumerate(zip(got, want)):
        _close(a, e, f"gradient {i}", ATOL_RELU_GRAD if mode == RNN_RELU else ATOL)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_bf16_errs_no_more_than_torch_nn_bf16(kind):
    # The tolerances above allow a few ulps of each result's largest element; here each
    # output and gradient must err (largest error / largest element, vs fp64) at most 1.5x
    # as much as torch.nn's bf16 module on the same weights and inputs, or 2 bf16 ulps.
    torch.manual_seed(1)
    T_, B_, H = 40, 16, 64
    ref = getattr(torch.nn, kind)(H, H)
    fused = getattr(fused_rnn, kind)(H, H)
    fused.load_state_dict(ref.state_dict())
    x, up = randn(T_, B_, H), randn(T_, B_, H, dtype=torch.float64)

    def run(m, dtype):
        m = copy.deepcopy(m).to(dtype)
        xx = x.to(dtype).requires_grad_(True)
        with fused_rnn.use_backend("cpu"):
            y = m(xx)[0]
        (y.double() * up).sum().backward()
        return [y.double(), xx.grad.double()] + [p.grad.double() for p in m.parameters()]

    exact, theirs, ours = run(ref, torch.float64), run(ref, torch.bfloat16), run(fused, torch.bfloat16)
    names = ["y", "dx", "dW_ih", "dW_hh", "db_ih", "db_hh"]
    for name, e, t, o in zip(names, exact, theirs, ours):
        err = lambda a: ((a - e).abs().max() / e.abs().max()).item()  # noqa: E731
        assert err(o) <= max(1.5 * err(t), 2 ** -7), f"{name}: {err(o):.2e} vs torch.nn's {err(t):.2e}"


def test_pairs_are_used_where_the_cpu_has_them():
    cpu_flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    has = " avx512_bf16" in cpu_flags and _native.cpu_capability() == "avx512"
    assert _native.cpu_bf16_pairs() == has
    code = "from fused_rnn import _native; print(_native.cpu_bf16_pairs())"
    r = subprocess.run([sys.executable, "-c", code], env=dict(child_env(), FUSED_RNN_CPU_BF16="0"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "False", r.stderr


@pytest.mark.skipif(not _native.cpu_bf16_pairs(), reason="this CPU has no AVX512-BF16: "
                    "the tests above already ran the widened path")
def test_widened_path_passes_the_same_tests():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "tests/test_cpu_bf16.py", "-k", "matches_reference or errs_no_more"],
                       env=dict(child_env(), FUSED_RNN_CPU_BF16="0"), cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
