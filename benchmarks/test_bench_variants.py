"""pytest-benchmark suite for the variant recurrences (LayerNormLSTM, headwise LSTM) on each
available backend against what PyTorch runs without fused_rnn, one group per case.

    python -m pytest benchmarks/test_bench_variants.py --benchmark-only

Few rounds: the loops are slow on CPU; ``python -m benchmarks.run --ops variants`` prints the
ratios measured in one process.
"""

import functools

import pytest

import fused_rnn

from . import variant_cases as V
from .measure import synchronize

CASES = [(case, implementation) for case in V.all_cases()
         for implementation in V.implementation_names(fused_rnn.available_backends(), case.variant)]


@functools.lru_cache(maxsize=None)
def workload_for(variant, shape, device):
    """Built once per (variant, shape, device), so every implementation times the same data."""
    return V.build_workload(variant, shape, device)


@pytest.mark.parametrize("case,implementation", CASES,
                         ids=[f"{c.id}-{i}" for c, i in CASES])
def test_variants(benchmark, bench_device, case, implementation):
    workload = workload_for(case.variant, case.shape, bench_device)
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
