"""The cuda backend's recurrence (``fused_rnn.ops.recurrence.stepwise``): its time loops
(``csrc/stepwise/recurrence_loop.h``: a GEMM per step, then the fused pointwise step of
``csrc/include/fused_rnn/recurrence_step.cuh``), checked against the reference.

On CPU tensors the ops run the kernels' per-element functions on host threads, so without a
GPU everything but the launch is exercised: the loops, the GEMMs around the kernels, the
saved layout, the gate gradients written over the saved activations, the row order of
reversed rows. Where the cuda backend is available (a GPU and a CUDA build), the same checks
run on CUDA tensors too, in half precision as well. The module grid runs on CPU through
the ``cuda_host`` backend of conftest.py.

Every test here forces the per-step loop (``FUSED_RNN_CUDA_SEQUENCE=0``);
tests/test_sequence_recurrence.py runs the same checks through the whole-sequence kernels.
"""

import glob
import os
import shutil
import subprocess
import sysconfig

import pytest
import torch

from fused_rnn import backends
from fused_rnn.ops.recurrence import reference, stepwise
from fused_rnn.ops.recurrence.cells import LSTM, GRU, RNN_TANH, LayerWeights
from fused_rnn.ops.recurrence.function import recurrence_layer
from fused_rnn.testing import assert_close

import test_recurrence_function as per_layer
import test_recurrence_modules as modules
from test_recurrence_function import CASES, _leaves, make_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_CUDA = "cuda" in backends.available_backends()
DEVICE_DTYPES = [pytest.param("cpu", d, id=f"cpu-{d}") for d in ("fp64", "fp32")] + [
    pytest.param("cuda", d, id=f"cuda-{d}",
                 marks=pytest.mark.skipif(not ON_CUDA, reason=f"cuda backend: "
                                          f"{backends.backend_report()['cuda']}"))
    for d in ("fp64", "fp32", "fp16", "bf16")]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16,
          "bf16": torch.bfloat16}


@pytest.fixture(autouse=True)
def _per_step_loop(monkeypatch):
    """The per-step loop, also where the whole-sequence kernels would take the layer."""
    monkeypatch.setenv("FUSED_RNN_CUDA_SEQUENCE", "0")


@pytest.mark.parametrize("device,dt", DEVICE_DTYPES)
@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", CASES)
def test_layer_matches_the_reference(device, dt, mode, reverse, lengths, proj, bias):
    """Outputs and every gradient against the float64 reference, from the same inputs
    rounded to the dtype under test."""
    dtype = DTYPES[dt]
    rtol, atol = backends.get_backend("cuda").tolerances[dtype]
    x, h0, c0, w, lens = make_args(mode, lengths, proj, bias)
    rounded = [None if t is None else t.detach().to(dtype).double().requires_grad_()
               for t in (x, h0, c0, *w)]
    mine = [None if t is None else t.detach().to(device, dtype).requires_grad_() for t in rounded]
    ops_in = lambda ts: (ts[0], ts[1], ts[2], LayerWeights(*ts[3:]))  # noqa: E731
    rx, rh0, rc0, rw = ops_in(rounded)
    want = [o for o in reference._fwd(mode, reverse, rx, rh0, rc0, rw, lens, need_saved=False)[:3]
            if o is not None]
    mx, mh0, mc0, mw = ops_in(mine)
    got = [o for o in recurrence_layer(stepwise, mode, reverse, mx, mh0, mc0, mw, lens)
           if o is not None]
    for n, a, e in zip(("y", "h_n", "c_n"), got, want):
        assert a.dtype == dtype and a.device.type == device, n
        assert_close(a.double().cpu(), e, rtol=rtol, atol=atol, name=n)
    ups = [torch.randn_like(t) for t in want]
    leaves_r = [t for t in rounded if t is not None]
    leaves_m = [t for t in mine if t is not None]
    g_want = torch.autograd.grad(sum((o * u).sum() for o, u in zip(want, ups)), leaves_r)
    g_got = torch.autograd.grad(sum((o * u.to(device, dtype)).sum() for o, u in zip(got, ups)),
                                leaves_m)
    names = ["dx", "dh0"] + (["dc0"] if c0 is not None else []) + [
        f"d{f}" for f, t in zip(LayerWeights._fields, w) if t is not None]
    for n, a, e in zip(names, g_got, g_want):
        assert_close(a.double().cpu(), e, rtol=rtol, atol=atol, name=n)


@pytest.mark.parametrize("mode,reverse,lengths,proj,bias", [c for c in CASES if c.values[4]])
def test_gradcheck_float64(cuda_host, mode, reverse, lengths, proj, bias):
    per_layer.test_gradcheck_float64(cuda_host, mode, reverse, lengths, proj, bias)


@pytest.mark.parametrize("mode", [LSTM, GRU, RNN_TANH])
def test_second_backward_recomputes_the_spent_activations(cuda_host, mode):
    per_layer.test_second_backward_through_a_retained_graph_gives_the_same_gradients(
        cuda_host, mode)


def test_strided_lengths_read_as_their_values(cuda_host):
    per_layer.test_strided_lengths_read_as_their_values(cuda_host)


def test_inference_saves_nothing(cuda_host):
    per_layer.test_inference_saves_nothing_for_backward(cuda_host)


def _module_grid():
    for mode in modules.MODES:
        for proj in ((0, modules.P) if mode == "lstm" else (0,)):
            for form in ("padded", "packed_unsorted"):
                for dt in modules.DTYPES:
                    yield pytest.param(mode, proj, form, dt, id=f"{mode}-proj{proj}-{form}-{dt}")


@pytest.mark.parametrize("mode,proj,form,dt", list(_module_grid()))
def test_module_matches_torch(cuda_host, mode, proj, form, dt):
    """Two layers, both directions: the modules' parity grid on the stepwise loops."""
    with backends.use_backend(cuda_host):
        modules.test_module_matches_torch(cuda_host, mode, 2, True, False, proj, form, dt)


def _ops_args(mode=LSTM, dtype=torch.float64):
    x, h0, c0, w, _ = make_args(mode, False, 0, True, dtype)
    return [t.detach() for t in (x, h0, c0)], [t.detach() for t in w if t is not None]


def test_bad_arguments_are_named():
    (x, h0, c0), w = _ops_args()
    ops = torch.ops.fused_rnn
    with pytest.raises(RuntimeError, match="the cuda backend's ops take float32 or float64"):
        ops.stepwise_recurrence_forward(0, False, x.half(), h0.half(), c0.half(), None,
                                        *(t.half() for t in w), None, True)
    with pytest.raises(RuntimeError, match=r"h0 must have shape \[3, 7\]"):
        ops.stepwise_recurrence_forward(0, False, x, h0[:2], c0, None, *w, None, True)
    y, h_n, c_n, saved = ops.stepwise_recurrence_forward(0, False, x, h0, c0, None, *w, None, True)
    bad = list(saved)
    bad[2] = bad[2].float()  # the cell states of an fp64 call are fp64
    with pytest.raises(RuntimeError, match=r"saved\[cs\] must be a contiguous Double tensor"):
        ops.stepwise_recurrence_backward(0, False, x, h0, c0, None, *w, None, bad,
                                         torch.randn_like(y), None, None)
    with pytest.raises(RuntimeError, match="saved must hold the 3 tensors"):
        ops.stepwise_recurrence_backward(0, False, x, h0, c0, None, *w, None, saved[:2],
                                         torch.randn_like(y), None, None)


def test_the_cuda_backend_says_why_it_is_missing():
    reason = backends.backend_report()["cuda"]
    if ON_CUDA:
        assert reason == "available"
    elif torch.version.cuda is None:
        assert reason == "torch is a CPU-only build"
    else:
        assert "CUDA" in reason


def _cuda_bindings():
    paths = sorted(glob.glob(os.path.join(ROOT, "csrc", "bindings", "*.cpp")))
    return [p for p in paths if "FUSED_RNN_WITH_CUDA" in open(p).read()]


@pytest.mark.parametrize("path", _cuda_bindings(), ids=os.path.basename)
def test_the_bindings_compile_with_their_cuda_path(path):
    """The CUDA half of a binding (stream, device guard, launchers, half storage) is built
    only with a CUDA torch: compile it here too, against the same torch headers (it needs
    no CUDA header), warnings as errors."""
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, c++, g++) to compile the bindings")
    system = cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           "-DFUSED_RNN_WITH_CUDA", *(a for p in system for a in ("-isystem", p)),
           "-I", os.path.join(ROOT, "csrc", "include"), path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, " ".join(cmd) + "\n" + proc.stderr[-4000:]
