"""pytest-benchmark suite: the runner's cases, one test per (case, implementation).

    python -m pytest benchmarks --benchmark-only                  # CPU
    python -m pytest benchmarks --benchmark-only --bench-device cuda

Each group (one case) compares torch.nn, the cell loop (eager and with its step compiled) and
every available fused_rnn backend. Few rounds: the reference backend is a slow Python loop, and the table with
ratios, FLOP rates and memory is ``python -m benchmarks.run``'s job.
"""

import functools

import pytest

import fused_rnn

from . import cases as C
from .measure import synchronize

IMPLEMENTATIONS = C.implementation_names(fused_rnn.available_backends())


@functools.lru_cache(maxsize=None)
def workload_for(cell: str, shape: C.Shape, device):
    """Built once per (cell, shape, device), so every implementation times the same data."""
    return C.build_workload(cell, shape, device)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", C.all_cases(), ids=lambda case: case.id)
def test_recurrence(benchmark, bench_device, case, implementation):
    reason = C.same_as_another_row(case, implementation)
    if reason:
        pytest.skip(reason)
    workload = workload_for(case.cell, case.shape, bench_device)
    reason = C.unsupported_reason(workload, implementation)
    if reason:
        pytest.skip(reason)
    runner = C.make_runner(workload, implementation, case.mode)

    def run_and_wait():
        runner()
        synchronize(bench_device)  # time the GPU's work, not only its launch

    if implementation == C.COMPILED_CELL_LOOP:
        compile_or_skip(run_and_wait)
    benchmark.group = case.id
    benchmark.extra_info.update(flops=case.flops(), T=case.shape.T)
    benchmark.pedantic(run_and_wait, warmup_rounds=1, rounds=3, iterations=1)


def compile_or_skip(run_once) -> None:
    """Compile before the benchmark's rounds (the runner reports compile time on its own), and
    skip with the reason where torch.compile fails, as the runner's row does."""
    try:
        run_once()
    except Exception as err:  # noqa: BLE001 (whatever the compiler raises)
        pytest.skip(f"torch.compile failed: {C.first_line(err)}")
