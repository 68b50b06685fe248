"""pytest-benchmark suite for attention: the runner's attention cases, one test per (case,
backend); ``python -m pytest benchmarks --benchmark-only``."""

import functools

import pytest

import fused_rnn

from . import attention_cases as AC
from .measure import synchronize

BACKENDS = [AC.REFERENCE] + [b for b in fused_rnn.available_backends() if b != AC.REFERENCE]


@functools.lru_cache(maxsize=None)
def inputs_for(case: AC.AttnCase, device):
    return AC.build_inputs(case, device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", AC.all_cases(), ids=lambda case: case.id)
def test_attention(benchmark, bench_device, case, backend):
    inputs = inputs_for(case, bench_device)
    reason = AC.unsupported_reason(case, inputs, backend)
    if reason:
        pytest.skip(reason)
    runner = AC.make_runner(case, inputs, backend)

    def run_and_wait():
        runner()
        synchronize(bench_device)

    benchmark.group = case.id
    benchmark.pedantic(run_and_wait, warmup_rounds=1, rounds=3, iterations=1)
