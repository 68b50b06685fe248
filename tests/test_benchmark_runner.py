"""The benchmark runner end to end on a tiny matrix: the table on stdout, every field the
benchmark issue asks of the JSON, a PNG with one line per implementation, and a torch.compile
that cannot run reported in its row instead of ending the run."""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not installed

from benchmarks import cases as C  # noqa: E402
from benchmarks import run  # noqa: E402
from fused_rnn.testing import child_env  # noqa: E402

# Seconds, not minutes: tiny shapes, small ceilings, the two CPU backends (triton on CPU is
# the interpreter, far too slow for a timing run).
TINY = ["--quick", "--cells", "lstm", "--shapes", "5,2,8,8", "5,32,8,8",
        "--attn-shapes", "2,1,8,8", "--backends", "cpu,reference",
        "--gemm-size", "256", "--copy-mib", "8"]
MACHINE_TAGS = ("device", "device_name", "dtype", "torch", "triton", "cuda", "git_commit")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(stdout, JSON, PNG path) of one runner process, started as from a shell."""
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    env = child_env()
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", *TINY, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text()), out.with_suffix(".png")


def timed(rows: list) -> list:
    return [r for r in rows if "median_ms" in r]


def test_prints_the_table_with_every_ratio_and_ceiling(tiny_run):
    stdout, data, _ = tiny_run
    for column in ("x torch.nn", "x cell loop", "x compiled", "% GEMM", "% copy", "x reference"):
        assert column in stdout
    assert "least bytes" in stdout  # the definition of the bytes behind % copy
    for implementation in C.implementation_names(["cpu", "reference"]):
        assert f" {implementation} |" in stdout


def test_json_tags_every_row_with_machine_versions_and_commit(tiny_run):
    _, data, _ = tiny_run
    meta = data["metadata"]
    for key in MACHINE_TAGS + ("gemm", "copy", "torch_compile", "settings"):
        assert key in meta, key
    assert meta["device_name"] and meta["torch"] == torch.__version__
    assert meta["cuda"] == torch.version.cuda
    assert meta["copy"]["gbytes_per_s_before"] > 0 and meta["copy"]["gbytes_per_s_after"] > 0
    assert data["rows"]
    for row in data["rows"]:
        assert all(key in row for key in MACHINE_TAGS), row
        assert row["dtype"] == "float32"


def test_json_rows_have_shapes_times_and_rates(tiny_run):
    _, data, _ = tiny_run
    recurrence = [r for r in data["rows"] if "cell" in r]
    attention = [r for r in data["rows"] if "kind" in r]
    assert {(r["T"], r["B"], r["I"], r["H"]) for r in recurrence} == {(5, 2, 8, 8), (5, 32, 8, 8)}
    assert {(r["B"], r["Tq"], r["Tk"], r["D"]) for r in attention} == {(2, 1, 8, 8)}
    for r in timed(data["rows"]):
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"], r
    for r in timed(recurrence):
        assert r["fraction_of_gemm"] > 0
        assert all(key in r for key in ("vs_torch_nn", "vs_cell_loop", "vs_compiled_cell_loop"))
        # Memory-bound (small-batch) rows, and only they, are rated against the copy too.
        assert ("fraction_of_copy" in r) == (r["B"] <= C.MEMORY_BOUND_MAX_BATCH), r
    for r in timed(attention):
        assert r["bytes"] > 0 and r["fraction_of_copy"] > 0


def test_compiled_rows_report_their_compile_apart_or_why_not(tiny_run):
    _, data, _ = tiny_run
    compiled = [r for r in data["rows"] if r.get("implementation") == C.COMPILED_CELL_LOOP]
    assert len(compiled) == 4  # 2 shapes x 2 modes
    for r in compiled:
        if "skipped" in r:
            assert r["skipped"].startswith("torch.compile"), r
        else:
            assert r["compile_s"] > 0 and len(r["times_ms"]) == r["repeats"]


def test_png_is_written_with_one_line_per_implementation(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    _, data, png = tiny_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recurrence = timed([r for r in data["rows"] if "cell" in r])
    drawn = run.plot(tmp_path / "again.png", recurrence, data["metadata"])
    for panel, names in drawn.items():
        cell, mode = panel.split(" ")
        expected = {r["implementation"] for r in recurrence if (r["cell"], r["mode"]) == (cell, mode)}
        assert sorted(names) == sorted(expected), panel
    assert set(drawn) == {"lstm fwd", "lstm fwd+bwd"}


def tiny_row_inputs():
    case = C.Case("lstm", C.Shape(T=3, B=2, I=4, H=4), "fwd")
    return case, C.build_workload(case.cell, case.shape), argparse.Namespace(warmup=1, repeats=1)


def test_a_failing_compile_is_a_row_that_says_why(monkeypatch):
    def broken_compile(*args, **kwargs):
        def compiled(*a, **kw):
            raise RuntimeError("inductor: the C++ compiler crashed\nlong log")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    case, workload, args = tiny_row_inputs()
    row = run.measure_row(case, workload, C.COMPILED_CELL_LOOP, torch.device("cpu"), args)
    assert row["skipped"] == "torch.compile failed: RuntimeError: inductor: the C++ compiler crashed"


def test_no_compiler_is_a_row_that_says_why(monkeypatch):
    monkeypatch.setattr(C, "compiler_missing_reason", lambda device: "no C++ compiler here")
    case, workload, args = tiny_row_inputs()
    row = run.measure_row(case, workload, C.COMPILED_CELL_LOOP, torch.device("cpu"), args)
    assert row["skipped"] == "no C++ compiler here"


def test_a_training_run_leaves_no_gradients_so_its_peak_is_the_same_each_time():
    # The peak window once credited freeing the previous run's gradients, depending on
    # whether that free fell inside it: 31 or 39 MiB for the same GRU run.
    from benchmarks.measure import peak_mib

    w = C.build_workload("gru", C.Shape(T=20, B=16, I=32, H=32))
    for implementation in (C.TORCH_NN, C.FUSED_PREFIX + "reference"):
        runner = C.make_runner(w, implementation, "fwd+bwd")
        runner()
        assert w.x.grad is None and all(p.grad is None for p in w.parameters())
        peaks = [peak_mib(runner, torch.device("cpu")) for _ in range(3)]
        dx_mib = w.x.numel() * w.x.element_size() / 2**20
        # dx is allocated in the run and counted, never offset by an earlier free.
        assert peaks[0] == peaks[1] == peaks[2] and peaks[0] >= dx_mib, peaks


@pytest.mark.skipif(not pathlib.Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo")
def test_a_cpus_name_carries_its_family_and_model_where_cpuinfo_has_them():
    """A VM may call a Zen 4 and a Zen 5 host both "AMD EPYC"; their rates differ twofold,
    so results (and the README's tables, keyed by this name) must tell them apart."""
    info = pathlib.Path("/proc/cpuinfo").read_text()
    name = run._device_name(torch.device("cpu"))
    for key in ("cpu family", "model"):
        line = next((ln for ln in info.splitlines() if ln.split(":")[0].strip() == key), None)
        if line is not None:
            assert f"{key.split()[-1]} {line.split(':', 1)[1].strip()}" in name, name
