"""The variant benchmark rows on a tiny shape: the plain implementation each is measured
against computes what the fused module computes (outputs and gradients), and every row
carries its time and ratio."""

import dataclasses
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not installed

from benchmarks import run  # noqa: E402
from benchmarks import variant_cases as V  # noqa: E402
from benchmarks.cases import Shape  # noqa: E402
from fused_rnn import backends  # noqa: E402
from fused_rnn.testing import assert_close  # noqa: E402

TINY = Shape(T=5, B=3, I=4, H=16)  # H: a multiple of the headwise rows' heads


@pytest.mark.parametrize("name", V.VARIANTS)
def test_plain_implementation_is_the_module(backend, name):
    variant = V.VARIANTS[name]
    if variant.op not in backends.get_backend(backend).modules:
        pytest.skip(f"backend {backend!r} has no {variant.op} op (yet)")
    w = V.build_workload(variant, TINY, dtype=torch.float64)
    got = V.forward_fn(w, V.FUSED_PREFIX + backend)(w.x)
    want = variant.plain(w.module, w.x)
    assert_close(got, want, rtol=1e-7, atol=1e-9, name="output")
    up = torch.randn_like(want)
    leaves = [w.x, *w.module.parameters()]
    for a, e in zip(torch.autograd.grad((got * up).sum(), leaves),
                    torch.autograd.grad((want * up).sum(), leaves)):
        assert_close(a, e, rtol=1e-7, atol=1e-9, name="grad")


def test_rows_have_times_and_ratios():
    tiny = [dataclasses.replace(v, shapes=(TINY,)) for v in V.VARIANTS.values()]
    rows = V.measure_rows(["reference"], torch.device("cpu"), torch.float32, 0, 2, variants=tiny)
    assert [(r["variant"], r["mode"], r["implementation"]) for r in rows] == [
        (v, m, i) for v in V.VARIANTS for m in V.MODES for i in (V.PLAIN, V.FUSED_PREFIX + "reference")]
    for r in rows:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and len(r["times_ms"]) == 2
        assert r["vs_plain"] > 0 and r["max_abs_diff_vs_plain"] < 1e-5


def test_runner_takes_variants_as_an_op_and_leaves_it_out_by_default():
    assert "variants" in run.parse_args(["--ops", "variants"]).ops
    assert "variants" not in run.parse_args([]).ops
