"""The cpu backend's own concerns: every vector-ISA table it carries runs the parity tests
(the CI machine only picks its best one by itself), and the ops' own argument checks."""

import os
import subprocess
import sys

import pytest
import torch

import fused_rnn
from fused_rnn import _native
from fused_rnn.testing import child_env

needs_extension = pytest.mark.skipif(
    _native.cpu_available() is not None,
    reason=f"the cpu backend is not built here: {_native.cpu_available()}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ["default", "avx2", "avx512"]


def _run_parity_tests(env, extra=()):
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "cpu",
         "tests/test_recurrence_function.py", "tests/test_recurrence_modules.py", *extra],
        env=dict(os.environ, **env), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


@needs_extension
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_lower_vector_isa_tables_pass_the_parity_tests(capability):
    best = _native.cpu_capability()
    if ORDER.index(capability) > ORDER.index(best):
        pytest.skip(f"this CPU runs at most {best}")
    env = dict(os.environ, FUSED_RNN_CPU_CAPABILITY=capability)
    code = "from fused_rnn import _native; print(_native.cpu_capability())"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.stdout.strip() == capability, r.stderr
    _run_parity_tests({"FUSED_RNN_CPU_CAPABILITY": capability})


@needs_extension
@pytest.mark.parametrize("input_gemm", ["0", "1"])
def test_both_forward_paths_pass_the_parity_tests(input_gemm):
    """The step computes x_t W_ih^T itself or reads it from one GEMM over all steps (B < 4, or
    large weights and B <= 32); each path is forced in turn. The GEMM takes the tiles from 256
    rows, which only tests/test_cpu_sums_over_steps.py reaches."""
    _run_parity_tests({"FUSED_RNN_CPU_INPUT_GEMM": input_gemm},
                      extra=["tests/test_cpu_sums_over_steps.py"] if input_gemm == "1" else [])


@needs_extension
@pytest.mark.parametrize("rows", ["1", "400"])
def test_sums_over_steps_in_chunks_pass_the_parity_tests(rows):
    """The backward hands its gradients to the sums over steps (dx, dW) in chunks (an RNN's
    of ~512 rows, LSTM's and GRU's all at once), which the test sizes never split: one step
    per chunk for every cell, then chunks of 400 rows (several chunks of the tiles' sizes in
    tests/test_cpu_sums_over_steps.py). bf16 LSTM and GRU take chunks too (their activations
    are widened a chunk at a time)."""
    _run_parity_tests({"FUSED_RNN_CPU_SUM_ROWS": rows},
                      extra=["tests/test_cpu_sums_over_steps.py", "tests/test_cpu_bf16.py"])


@needs_extension
@pytest.mark.parametrize("rows", ["", "1"])
def test_recomputed_activations_pass_the_parity_tests(rows):
    """With FUSED_RNN_RECOMPUTE=always every training forward keeps only its states (even
    the test sizes', too small to gain from it) and the backward recomputes LSTM's and GRU's
    activations chunk by chunk: the whole parity grid (gradcheck included), then again with
    one step per chunk."""
    env = {"FUSED_RNN_RECOMPUTE": "always"}
    if rows:
        env["FUSED_RNN_CPU_SUM_ROWS"] = rows
    _run_parity_tests(env, extra=["tests/test_cpu_sums_over_steps.py"])


def _env_cpu_first():
    """The environment of a child where cpu is the best backend there can be: without
    TRITON_INTERPRET (which the test session sets) Triton cannot run on CPU tensors."""
    return child_env()


def _op_args(B=3, T=4, I=5, H=6):
    x = torch.randn(T, B, I)
    return dict(mode=0, reverse=False, x=x, h0=torch.randn(B, H), c0=torch.randn(B, H),
                lengths=None, w_ih=torch.randn(4 * H, I), w_hh=torch.randn(4 * H, H),
                b_ih=torch.randn(4 * H), b_hh=torch.randn(4 * H), w_hr=None, saves=1)


@needs_extension
@pytest.mark.parametrize("change, message", [
    (dict(mode=7), "mode must be 0 .LSTM."),
    (dict(x=torch.randn(4, 3)), r"x must be 3-D \[T, B, I\]"),
    (dict(x=torch.randn(4, 3, 5, dtype=torch.float64)), "w_ih has dtype Float but x has dtype Double"),
    (dict(x=torch.randn(0, 3, 5)), "x must have at least one step"),
    (dict(h0=torch.randn(3, 7)), r"h0 must have shape \[3, 6\]"),
    (dict(c0=None), "c0 is required for LSTM"),
    (dict(w_hh=torch.randn(24, 5)), r"w_hh must have shape \[24, 6\]"),
    (dict(b_hh=None), "b_ih and b_hh must be given together"),
    (dict(lengths=torch.tensor([1, 2, 5])), r"lengths must lie in \[0, 4\]"),
    (dict(lengths=torch.tensor([1.0, 2.0, 3.0])), "lengths must be an int64 CPU tensor"),
    (dict(w_hr=torch.randn(2, 6)), r"w_hh must have shape \[24, 2\]"),
    (dict(saves=3), r"saves must be 0 \(nothing\), 1 \(all\) or 2 \(the states\), got 3"),
])
def test_op_checks_name_the_argument(change, message):
    args = dict(_op_args(), **change)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fused_rnn.recurrence_forward(*args.values())


@needs_extension
def test_auto_picks_cpu_for_cpu_tensors():
    code = ("import torch, fused_rnn; from fused_rnn import backends; print(backends.select("
            "backends.OpCall('recurrence', torch.device('cpu'), torch.float32, {})).name)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=_env_cpu_first())
    assert r.returncode == 0 and r.stdout.strip() == "cpu", r.stdout + r.stderr


def test_without_the_extension_auto_falls_back_to_reference_with_one_warning():
    """Not skipped when unbuilt: simulates a missing fused_rnn._C in a fresh interpreter."""
    code = """
import sys, warnings
sys.modules["fused_rnn._C"] = None  # import fused_rnn._C now raises ImportError
import torch, fused_rnn
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    m = fused_rnn.LSTM(3, 4)
    for _ in range(2):
        m(torch.randn(5, 2, 3))
msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
print(fused_rnn.available_backends())
print(len(msgs))
print(msgs[0] if msgs else "")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=_env_cpu_first())
    assert r.returncode == 0, r.stderr
    backends_line, count, message = r.stdout.strip().splitlines()
    assert backends_line == "['reference']"
    assert count == "1"
    assert "'cpu'" in message and "pip install --no-build-isolation -e ." in message


def test_a_broken_extension_falls_back_and_a_forced_cpu_says_why():
    """An extension that fails to load (built against another torch: OSError) is reported,
    not raised at import; forcing the cpu backend names the cause and the fix."""
    code = """
import importlib.abc, sys, warnings

class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fused_rnn._C":
            raise OSError("undefined symbol: _ZN3c104impl3fooEv")

sys.meta_path.insert(0, Broken())
import torch, fused_rnn
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    fused_rnn.GRU(3, 4)(torch.randn(2, 1, 3))
try:
    with fused_rnn.use_backend("cpu"):
        fused_rnn.GRU(3, 4)(torch.randn(2, 1, 3))
except fused_rnn.BackendError as e:
    print(e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=_env_cpu_first())
    assert r.returncode == 0, r.stderr
    assert "cannot be loaded (OSError: undefined symbol" in r.stdout, r.stdout
    assert "pip install --no-build-isolation -e ." in r.stdout, r.stdout
