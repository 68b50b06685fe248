"""pytest-benchmark suite for the decoder step: the runner's decoder cases, one test per
(case, implementation); ``python -m pytest benchmarks/test_bench_decoder.py --benchmark-only``.
Times are for ``shape.steps`` decoder steps; the runner (``--ops decoder``) reports them per
step and as a ratio measured in alternation."""

import functools

import pytest

from . import decoder_cases as DC


@functools.lru_cache(maxsize=None)
def pair_and_inputs(cell, shape):
    return DC.build_pair(cell, shape), DC.build_inputs(shape)


@pytest.mark.parametrize("implementation", DC.IMPLEMENTATIONS)
@pytest.mark.parametrize("case", DC.all_cases(), ids=lambda case: case.id)
def test_decoder_step(benchmark, bench_device, case, implementation):
    if bench_device.type != "cpu":
        pytest.skip("decoder rows are CPU rows (the cuda backend is not bound yet)")
    (parts, fused), inputs = pair_and_inputs(case.cell, case.shape)
    step = fused if implementation == "fused" else parts
    benchmark.group = case.id
    benchmark.pedantic(DC.make_runner(case, step, inputs), warmup_rounds=1, rounds=3, iterations=1)
