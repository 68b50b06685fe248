"""pytest-benchmark suite for the variant recurrences: LayerNormLSTM on each available
backend with the variants op against its plain-PyTorch loop, one group per case.

    python -m pytest benchmarks/test_bench_variants.py --benchmark-only

Few rounds: the loops are slow on CPU; ``python -m benchmarks.run --ops variants`` prints the
ratios measured in one process.
"""

import functools

import pytest

import fused_rnn

from . import variant_cases as V
from .measure import synchronize

IMPLEMENTATIONS = V.implementation_names(fused_rnn.available_backends())


@functools.lru_cache(maxsize=None)
def workload_for(shape, device):
    """Built once per (shape, device), so every implementation times the same data."""
    return V.build_workload(shape, device)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", V.all_cases(), ids=lambda case: case.id)
def test_variants(benchmark, bench_device, case, implementation):
    workload = workload_for(case.shape, bench_device)
    reason = V.unsupported_reason(workload, implementation)
    if reason:
        pytest.skip(reason)
    runner = V.make_runner(workload, implementation, case.mode)

    def run_and_wait():
        runner()
        synchronize(bench_device)

    benchmark.group = case.id
    benchmark.extra_info.update(T=case.shape.T)
    benchmark.pedantic(run_and_wait, warmup_rounds=1, rounds=3, iterations=1)
