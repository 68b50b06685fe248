"""Test helpers shared by the tests and benchmarks: the tolerance table, input factories
and assertions that say which tensor differs and by how much."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import backends


def tolerance(backend: str, dtype: torch.dtype) -> tuple:
    """``(rtol, atol)`` that ``backend`` declares for ``dtype``."""
    return backends.get_backend(backend).tolerances[dtype]


def testable_backends() -> list:
    """Backends to parametrize tests over: those available on this machine."""
    return backends.available_backends()


def randn(*shape, dtype=torch.float32, device=None, requires_grad=False, scale=1.0):
    """Fresh standard-normal values (never zeros), optionally a leaf requiring grad; on
    ``device``, else torch's default device (the tests' ``backend`` fixture sets it)."""
    t = (torch.randn(*shape, dtype=torch.float64, device=device) * scale).to(dtype)
    return t.requires_grad_(requires_grad)


def random_lengths(batch: int, steps: int, *, sorted_desc: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[batch] int64 lengths in [1, steps], with the full length present at least once."""
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[torch.randint(0, batch, (1,), generator=generator)] = steps
    return lengths.sort(descending=True).values if sorted_desc else lengths


def assert_close(actual, expected, *, rtol: float, atol: float, name: str = "tensor") -> None:
    """Like ``torch.testing.assert_close`` (NaN equal to NaN), naming the tensor."""
    if actual is None or expected is None:
        assert actual is None and expected is None, (
            f"{name}: one side is None (actual={type(actual).__name__}, "
            f"expected={type(expected).__name__})")
        return
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               check_dtype=False, msg=lambda m: f"{name}: {m}")


def assert_all_close(actual: Sequence, expected: Sequence, names: Sequence[str], *,
                     rtol: float, atol: float) -> None:
    assert len(actual) == len(expected) == len(names), "mismatched lists"
    for a, e, n in zip(actual, expected, names):
        assert_close(a, e, rtol=rtol, atol=atol, name=n)


def child_env() -> dict:
    """``os.environ`` for a child Python that must import this checkout of fused_rnn
    (installed or not) and compile or run Triton kernels for real: without
    ``TRITON_INTERPRET``, with the checkout on ``PYTHONPATH``."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


_FAULT_COUNT = """
import resource, torch, fused_rnn
torch.set_num_threads(1)
{setup}
with fused_rnn.use_backend("cpu"):
    for _ in range({warmup}):
        {call}
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({runs}):
        {call}
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / {runs})
"""


def page_faults_per_call(setup: str, call: str, *, warmup: int, runs: int,
                         env: Optional[dict] = None) -> float:
    """Minor page faults per ``call`` (one line of code) in a fresh process on the cpu
    backend, after ``warmup`` calls; ``setup`` (top-level code, no indent) defines what
    ``call`` uses. Fresh, since what earlier tests freed sets glibc's thresholds."""
    import subprocess
    import sys

    code = _FAULT_COUNT.format(setup=setup, call=call, warmup=warmup, runs=runs)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env if env is not None else child_env(), timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"the fault-counting child failed:\n{r.stderr}")
    return float(r.stdout.split()[-1])
