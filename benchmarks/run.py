"""The benchmark runner: fused_rnn vs torch.nn vs the nn.*Cell loop (eager and compiled), in one process.

    python -m benchmarks.run                       # CPU, recurrence and attention, every backend
    python -m benchmarks.run --ops attention       # attention only
    python -m benchmarks.run --ops variants        # LayerNormLSTM, headwise LSTM vs plain PyTorch (opt-in)
    python -m benchmarks.run --ops decoder         # decoder step: fused vs torch.nn parts
    python -m benchmarks.run --device cuda         # DESIGN.md's GPU matrix
    python -m benchmarks.run --quick --cells lstm --backends reference --shapes 100,1,256,256

Prints one table row per (cell, shape, mode, implementation), then one per attention
(score kind, shape, mode, backend) against the reference, writes every row, with
the machine, versions and commit, to JSON (default benchmarks/results/latest-<device>.json)
and plots time per step against batch size beside it (.png). The ceilings (a large GEMM's
FLOP rate, a large copy's byte rate) are measured in the same run, before and after the
rows, so the fractions of them are comparable across machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Optional

import torch

import fused_rnn
from fused_rnn.backends import backend_names

from . import attention_cases as AC
from . import decoder_cases as DC
from . import cases as C
from . import variant_cases as VC
from .measure import (OtherLoad, copy_gbytes_per_s, gemm_gflops, peak_mib,
                      saved_for_backward_mib, time_ms)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--cells", default=",".join(C.CELLS),
                   help="comma-separated subset of: " + ", ".join(C.CELLS))
    p.add_argument("--matrix", choices=("cpu", "gpu"), default=None,
                   help="which shapes (default: the device's; gpu is DESIGN.md's GPU matrix)")
    p.add_argument("--ops", default="recurrence,attention",
                   help="comma-separated subset of: recurrence, attention, variants "
                        "(LayerNormLSTM T100 B64 I256 H256 vs its plain loop, LSTM with 8 heads "
                        "T50 B64 I256 H1024 vs torch.nn.LSTM dense, LSTM and GRU on a "
                        "PackedSequence of mixed lengths vs torch.nn on it), decoder (one "
                        "attention-decoder step vs torch.nn parts); the last two not by default")
    p.add_argument("--backends", default=None,
                   help="comma-separated fused_rnn backends to time (default: all available)")
    p.add_argument("--quick", action="store_true", help="1 warm-up run and 3 timed runs per row")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs per row (default 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 10)")
    p.add_argument("--shapes", nargs="+", type=_shape_parser(C.Shape), default=None,
                   metavar="T,B,I,H", help="recurrence shapes instead of the matrix's")
    p.add_argument("--attn-shapes", nargs="+", type=_shape_parser(AC.AttnShape), default=None,
                   metavar="B,Tq,Tk,D", help="attention shapes instead of the matrix's")
    p.add_argument("--gemm-size", type=int, default=2048,
                   help="n of the n^3 GEMM that sets the ceiling (default 2048, as in DESIGN.md)")
    p.add_argument("--copy-mib", type=int, default=256,
                   help="MiB of the copy that sets the bandwidth ceiling (default 256)")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="JSON path (default benchmarks/results/latest-<device>.json)")
    p.add_argument("--plot", type=pathlib.Path, default=None,
                   help="PNG path (default: the JSON path with .png; needs matplotlib)")
    p.add_argument("--no-plot", action="store_true", help="draw no PNG")
    p.add_argument("--no-compiled", action="store_true",
                   help="leave out the torch.compile baseline (one compile per row)")
    args = p.parse_args(argv)
    args.cells = _parse_cells(p, args.cells)
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if not args.ops or set(args.ops) - {"recurrence", "attention", "variants", "decoder"}:
        p.error("--ops: expected a comma-separated subset of recurrence, attention, variants, "
                "decoder, "
                f"got {args.ops}")
    args.backends = _parse_backends(p, args.backends)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False on this machine")
    args.out = args.out or RESULTS_DIR / f"latest-{args.device}.json"
    args.plot = None if args.no_plot else (args.plot or args.out.with_suffix(".png"))
    args.matrix = args.matrix or ("gpu" if args.device == "cuda" else "cpu")
    args.shapes = tuple(args.shapes or C.MATRICES[args.matrix])
    args.attn_shapes = tuple(args.attn_shapes or AC.MATRICES[args.matrix])
    return args


def _shape_parser(shape_class):
    """argparse type: "100,64,256,256" -> shape_class(100, 64, 256, 256)."""
    fields = [f.name for f in dataclasses.fields(shape_class)]

    def parse(text: str):
        try:
            sizes = [int(v) for v in text.split(",")]
        except ValueError:
            sizes = []
        if len(sizes) != len(fields) or min(sizes) < 1:
            raise argparse.ArgumentTypeError(
                f"expected {len(fields)} positive integers {','.join(fields)}, got {text!r}")
        return shape_class(*sizes)

    parse.__name__ = shape_class.__name__  # argparse names the type in its error message
    return parse


def _parse_cells(parser, text: str) -> list:
    cells = [c.strip().lower() for c in text.split(",") if c.strip()]
    unknown = [c for c in cells if c not in C.CELLS]
    if unknown or not cells:
        parser.error(f"--cells: expected a comma-separated subset of {', '.join(C.CELLS)}, "
                     f"got {text!r}")
    return cells


def _parse_backends(parser, text: Optional[str]) -> list:
    """Requested backends that exist and are available; a missing one is skipped with a note,
    since "not built here" is a fact about the machine, not a mistake in the command."""
    if text is None:
        return fused_rnn.available_backends()
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in backend_names()]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(unknown)}; "
                     f"known: {', '.join(backend_names())}")
    report = fused_rnn.backend_report()
    for name in names:
        if report[name] != "available":
            print(f"note: backend {name!r} skipped: {report[name]}")
    return [b for b in names if report[b] == "available"]


# ---------------------------------------------------------------- environment

def environment(device: torch.device, dtype: torch.dtype) -> dict:
    """What a reader needs to trust or reproduce the numbers."""
    on_cuda = device.type == "cuda"
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": _device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,  # the CUDA torch was built with; None on a CPU-only build
        "fused_rnn": fused_rnn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        # --no-optional-locks: never take index.lock while someone else may be committing.
        "git_dirty": bool(_git("--no-optional-locks", "status", "--porcelain",
                               "--untracked-files=no")),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": _cpu_count(),
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        # cuDNN RNNs use TF32 in "fp32" when this is on; the GEMM ceiling (cuBLAS) does not
        # unless the matmul flag is on too. Recorded so fp32 GPU ratios can be read right.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if on_cuda else None,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32 if on_cuda else None,
        "fused_rnn_backends": fused_rnn.backend_report(),
        "torch_compile": C.compiler_missing_reason(device) or "available",
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        info = {}
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        if "model name" in info:
            # A VM may name only the brand ("AMD EPYC"): the family and model tell the
            # generations apart (AMD 25: Zen 3/4, 26: Zen 5), whose rates differ twofold.
            ids = [f"{k.split()[-1]} {info[k]}" for k in ("cpu family", "model") if k in info]
            return info["model name"] + (f" ({', '.join(ids)})" if ids else "")
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, not the host's
    except AttributeError:  # not on Linux
        return os.cpu_count()


def _triton_version() -> Optional[str]:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _git(*args) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# ---------------------------------------------------------------- measuring rows

def measure_row(case: C.Case, workload: C.Workload, implementation: str,
                device: torch.device, args) -> dict:
    row = {
        "cell": case.cell, "T": case.shape.T, "B": case.shape.B, "I": case.shape.I,
        "H": case.shape.H, "mode": case.mode, "implementation": implementation,
        "backend": C.fused_backend_of(implementation), "flops": case.flops(),
    }
    if case.memory_bound:
        row["bytes"] = case.min_bytes(workload.x.element_size())
    reason = C.unsupported_reason(workload, implementation)
    if reason:
        return {**row, "skipped": reason}
    runner = C.make_runner(workload, implementation, case.mode)
    compiled = implementation == C.COMPILED_CELL_LOOP
    # A compiled row always warms up, so that its compile never lands in a timed run.
    warmup = max(args.warmup, 1) if compiled else args.warmup
    try:
        timing = time_ms(runner, device, warmup, args.repeats)
    except Exception as err:  # noqa: BLE001 (any compiler failure: the row says why, the run goes on)
        if not compiled:
            raise
        return {**row, "skipped": f"torch.compile failed: {C.first_line(err)}"}
    row.update(
        median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms,
        times_ms=timing.times_ms, warmup=warmup, repeats=args.repeats,
        us_per_step=timing.median_ms * 1e3 / case.shape.T,
        gflops=case.flops() / (timing.median_ms * 1e-3) / 1e9,
        max_abs_diff_vs_torch_nn=C.max_abs_diff_vs_torch_nn(workload, implementation, case.mode),
    )
    if compiled:
        row["compile_s"] = timing.first_call_ms * 1e-3  # tracing + compiling + one run
    if "bytes" in row:
        row["gbytes_per_s"] = row["bytes"] / (timing.median_ms * 1e-3) / 1e9
    if case.mode == "fwd+bwd":
        held = [workload.x, *workload.parameters()]
        row["saved_for_backward_mib"] = saved_for_backward_mib(runner, held)
        row["peak_mib"] = peak_mib(runner, device)
    return row


BASELINE_RATIOS = ((C.TORCH_NN, "vs_torch_nn"), (C.CELL_LOOP, "vs_cell_loop"),
                   (C.COMPILED_CELL_LOOP, "vs_compiled_cell_loop"))


def add_ratios(rows: list, gemm_rate_gflops: float, copy_rate_gbytes: float) -> None:
    """Each row's time over each baseline's for the same case (lower is faster; None where
    the baseline has no time), its FLOP rate over the GEMM ceiling and, for memory-bound
    rows, its byte rate over the copy ceiling."""
    baselines = {}
    for r in rows:
        if "median_ms" in r and r["implementation"] in dict(BASELINE_RATIOS):
            baselines[(_case_key(r), r["implementation"])] = r["median_ms"]
    for r in rows:
        if "median_ms" not in r:
            continue
        for name, key in BASELINE_RATIOS:
            base = baselines.get((_case_key(r), name))
            r[key] = r["median_ms"] / base if base else None
        r["fraction_of_gemm"] = r["gflops"] / gemm_rate_gflops
        add_copy_fraction(r, copy_rate_gbytes)


def add_copy_fraction(row: dict, copy_rate_gbytes: float) -> None:
    if "gbytes_per_s" in row:
        row["fraction_of_copy"] = row["gbytes_per_s"] / copy_rate_gbytes


ROW_TAGS = ("device", "device_name", "dtype", "torch", "triton", "cuda", "git_commit",
            "date_utc")


def tag_rows(rows: list, meta: dict) -> None:
    """Copy the machine, versions and commit into every row, so a row keeps its context
    when rows from several result files are put together."""
    for r in rows:
        r.update({k: meta[k] for k in ROW_TAGS})


def _case_key(row: dict) -> tuple:
    return row["cell"], row["T"], row["B"], row["I"], row["H"], row["mode"]


def measure_all(args, device: torch.device, dtype: torch.dtype) -> list:
    implementations = [i for i in C.implementation_names(args.backends)
                       if not (args.no_compiled and i == C.COMPILED_CELL_LOOP)]
    rows = []
    for cell in args.cells:
        for shape in args.shapes:
            workload = C.build_workload(cell, shape, device, dtype)
            for mode in C.MODES:
                case = C.Case(cell, shape, mode)
                for implementation in implementations:
                    if C.same_as_another_row(case, implementation):
                        continue
                    row = measure_row(case, workload, implementation, device, args)
                    rows.append(row)
                    _print_progress(row)
    return rows


def measure_attention(args, device: torch.device, dtype: torch.dtype) -> list:
    """Each fused backend and the reference per attention case, with times as a ratio to the
    reference's and peak memory."""
    rows = []
    for case in AC.all_cases(shapes=args.attn_shapes):
        inputs = AC.build_inputs(case, device, dtype)
        for backend in [AC.REFERENCE] + [b for b in args.backends if b != AC.REFERENCE]:
            row = {"kind": case.kind, "mode": case.mode, "backend": backend,
                   **dataclasses.asdict(case.shape),
                   "bytes": case.min_bytes(inputs["query"].element_size())}
            reason = AC.unsupported_reason(case, inputs, backend)
            if reason:
                rows.append({**row, "skipped": reason})
                continue
            runner = AC.make_runner(case, inputs, backend)
            timing = time_ms(runner, device, args.warmup, args.repeats)
            row.update(median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms,
                       times_ms=timing.times_ms, warmup=args.warmup, repeats=args.repeats,
                       gbytes_per_s=row["bytes"] / (timing.median_ms * 1e-3) / 1e9,
                       peak_mib=peak_mib(runner, device))
            rows.append(row)
            print(f"  attn {case.kind} {case.shape.label} {case.mode:7} {backend}: "
                  f"{row['median_ms']:.1f} ms", file=sys.stderr, flush=True)
    ref = {(r["kind"], r["B"], r["Tq"], r["Tk"], r["D"], r["mode"]): r for r in rows
           if r["backend"] == AC.REFERENCE and "median_ms" in r}
    for r in rows:
        base = ref.get((r["kind"], r["B"], r["Tq"], r["Tk"], r["D"], r["mode"]))
        if base and "median_ms" in r:
            r["vs_reference"] = r["median_ms"] / base["median_ms"]
            r["peak_vs_reference"] = r["peak_mib"] / base["peak_mib"] if base["peak_mib"] else None
    return rows


ATTN_COLUMNS = (
    ("score", 8, lambda r: r["kind"]),
    ("shape", 22, lambda r: f"B{r['B']} Tq{r['Tq']} Tk{r['Tk']} D{r['D']}"),
    ("mode", 7, lambda r: r["mode"]),
    ("backend", 10, lambda r: r["backend"]),
    ("median ms", 9, lambda r: f"{r['median_ms']:.2f}"),
    ("min ms", 8, lambda r: f"{r['min_ms']:.2f}"),
    ("x reference", 11, lambda r: _fmt(r.get("vs_reference"), "{:.3f}")),
    ("GB/s", 6, lambda r: f"{r['gbytes_per_s']:.1f}"),
    ("% copy", 6, lambda r: _fmt(r.get("fraction_of_copy"), "{:.0%}")),
    ("peak MiB", 8, lambda r: _fmt(r.get("peak_mib"), "{:.1f}")),
    ("peak x ref", 10, lambda r: _fmt(r.get("peak_vs_reference"), "{:.3f}")),
)


def _print_progress(row: dict) -> None:
    what = f"{row['cell']} T{row['T']} B{row['B']} {row['mode']:7} {row['implementation']}"
    done = "skipped" if "skipped" in row else f"{row['median_ms']:.1f} ms"
    print(f"  {what}: {done}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- output

COLUMNS = (  # (header, width, row -> text)
    ("cell", 4, lambda r: r["cell"]),
    ("shape", 20, lambda r: f"T{r['T']} B{r['B']} I{r['I']} H{r['H']}"),
    ("mode", 7, lambda r: r["mode"]),
    ("implementation", 20, lambda r: r["implementation"]),
    ("median ms", 9, lambda r: f"{r['median_ms']:.2f}"),
    ("min ms", 8, lambda r: f"{r['min_ms']:.2f}"),
    ("max ms", 8, lambda r: f"{r['max_ms']:.2f}"),
    ("us/step", 8, lambda r: f"{r['us_per_step']:.1f}"),
    ("x torch.nn", 10, lambda r: _fmt(r.get("vs_torch_nn"), "{:.2f}")),
    ("x cell loop", 11, lambda r: _fmt(r.get("vs_cell_loop"), "{:.2f}")),
    ("x compiled", 10, lambda r: _fmt(r.get("vs_compiled_cell_loop"), "{:.2f}")),
    ("% GEMM", 6, lambda r: f"{100 * r['fraction_of_gemm']:.0f}%"),
    ("% copy", 6, lambda r: _fmt(r.get("fraction_of_copy"), "{:.0%}")),
    ("saved MiB", 9, lambda r: _fmt(r.get("saved_for_backward_mib"), "{:.1f}")),
    ("peak MiB", 8, lambda r: _fmt(r.get("peak_mib"), "{:.1f}")),
)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def table_legend(meta: dict, args) -> str:
    gemm, copy = meta["gemm"], meta["copy"]
    lines = [
        f"{meta['device_name']} ({meta['device']}, {meta['torch_threads']} threads), "
        f"torch {meta['torch']}, {meta['dtype']}, commit {(meta['git_commit'] or '?')[:10]}"
        f"{' (dirty)' if meta['git_dirty'] else ''}",
        f"GEMM ceiling: {gemm['n']}^3 {meta['dtype']} matmul, {gemm['gflops_before']:.0f} GFLOP/s "
        f"before the rows, {gemm['gflops_after']:.0f} after; the higher is used. "
        f"Copy ceiling: {copy['mib']} MiB {meta['device']} tensor copied to another, "
        f"{copy['gbytes_per_s_before']:.1f} GB/s (read + written) before the rows, "
        f"{copy['gbytes_per_s_after']:.1f} after; the higher is used. "
        f"Other processes: {_fmt(meta['other_processes_cores'], '{:.2f}')} cores busy meanwhile.",
        f"median/min/max ms: {args.repeats} timed runs after {args.warmup} warm-up runs; "
        "us/step = median / T.",
        "x torch.nn, x cell loop, x compiled: this row's median time / theirs for the same case "
        "(below 1 = faster).",
        f"{C.COMPILED_CELL_LOOP}: the cell loop with torch.compile of the cell's step (default "
        "inductor); its compile, in the first warm-up run, is in the JSON (compile_s), not in "
        f"the times. torch.compile here: {meta['torch_compile']}.",
        "% GEMM: GEMM FLOP rate (forward 2*B*G*H*(I+H) per step, G gates; fwd+bwd 3x) "
        "/ the GEMM ceiling.",
        f"% copy (memory-bound rows: B <= {C.MEMORY_BOUND_MAX_BATCH}, attention): least bytes "
        "moved / median time / the copy ceiling; least bytes = every tensor passed in read "
        "once (x or query/keys/values, weights; fwd+bwd: and the output's gradient), every "
        "tensor handed back written once (outputs, final state; fwd+bwd: and every gradient). "
        "Above 100%: the row's data stayed in cache between runs, which the copy does not.",
        "saved MiB (fwd+bwd): distinct tensor storages autograd saves for backward, "
        "input and weights excluded.",
        "peak MiB (fwd+bwd): most tensor memory allocated at once during one fwd+bwd, above "
        "what was allocated before it (CUDA: the allocator's peak; CPU: the profiler's "
        "allocation events).",
    ]
    return "\n".join(lines)


def format_table(rows: list, device_type: str, columns=COLUMNS) -> str:
    lines = [" | ".join(h.rjust(w) for h, w, _ in columns)]
    lines.append("-+-".join("-" * w for _, w, _ in columns))
    for r in rows:
        if "skipped" in r:
            lead = " | ".join(f(r).rjust(w) for _, w, f in columns[:4])  # the case's columns
            lines.append(f"{lead} | skipped: {r['skipped'].splitlines()[0]}")
        else:
            lines.append(" | ".join(f(r).rjust(w) for _, w, f in columns))
    return "\n".join(lines)


def compile_summary(rows: list) -> str:
    compiled = [r for r in rows if r["implementation"] == C.COMPILED_CELL_LOOP]
    times = [r["compile_s"] for r in compiled if "compile_s" in r]
    if not times:
        reasons = {r["skipped"] for r in compiled if "skipped" in r}
        return f"{C.COMPILED_CELL_LOOP}: no row timed ({'; '.join(sorted(reasons)) or 'not run'})"
    return (f"{C.COMPILED_CELL_LOOP}: first calls (compile + one run) took {sum(times):.1f} s "
            f"over {len(times)} rows, {min(times):.1f} to {max(times):.1f} s each, "
            "outside the timed runs")


def write_json(path: pathlib.Path, meta: dict, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metadata": meta, "rows": rows}, indent=1) + "\n")


def plot(path: pathlib.Path, rows: list, meta: dict) -> dict:
    """One panel per (cell, mode): time per step against batch size, one line per
    implementation (log scales). Returns the implementations drawn per panel title
    (empty when matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError:
        print(f"note: --plot {path} skipped: matplotlib is not installed (pip install matplotlib)")
        return {}
    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    timed = [r for r in rows if "us_per_step" in r]
    panels = list(dict.fromkeys((r["cell"], r["mode"]) for r in timed))
    implementations = list(dict.fromkeys(r["implementation"] for r in timed))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    drawn = {}
    for ax, (cell, mode) in zip(axes[0], panels):
        for k, name in enumerate(implementations):
            pts = sorted((r["B"], r["us_per_step"]) for r in timed
                         if r["cell"] == cell and r["mode"] == mode and r["implementation"] == name)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=f"C{k}", label=name)
                drawn.setdefault(f"{cell} {mode}", []).append(name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("us per step")
        ax.set_title(f"{cell} {mode}", fontsize=9)
        ax.grid(True, which="both", linewidth=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{meta['device_name']}, torch {meta['torch']}, {meta['dtype']}, "
                 f"commit {(meta['git_commit'] or '?')[:10]}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")
    return drawn


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    started = time.perf_counter()
    meta = environment(device, dtype)
    other_load = OtherLoad()
    copy_bytes = args.copy_mib * 2 ** 20
    gemm_before = gemm_gflops(args.gemm_size, device, dtype)
    copy_before = copy_gbytes_per_s(copy_bytes, device)
    rows = measure_all(args, device, dtype) if "recurrence" in args.ops else []
    attn_rows = measure_attention(args, device, dtype) if "attention" in args.ops else []
    variant_rows = (VC.measure_rows(args.backends, device, dtype, args.warmup, args.repeats)
                    if "variants" in args.ops else [])
    dec_rows = (DC.measure(args.warmup, args.repeats, dtype)
                if "decoder" in args.ops and device.type == "cpu" else [])
    # Measured again after the rows: a drop means the machine throttled or got busy.
    gemm_after = gemm_gflops(args.gemm_size, device, dtype)
    copy_after = copy_gbytes_per_s(copy_bytes, device)
    meta["gemm"] = {"n": args.gemm_size, "gflops_before": gemm_before, "gflops_after": gemm_after}
    meta["copy"] = {"mib": args.copy_mib, "gbytes_per_s_before": copy_before,
                    "gbytes_per_s_after": copy_after}
    add_ratios(rows, max(gemm_before, gemm_after), max(copy_before, copy_after))
    for r in attn_rows:
        add_copy_fraction(r, max(copy_before, copy_after))
    tag_rows(rows, meta)
    tag_rows(attn_rows, meta)
    tag_rows(variant_rows, meta)
    tag_rows(dec_rows, meta)
    meta["settings"] = {"warmup": args.warmup, "repeats": args.repeats,
                        "backends": args.backends, "cells": args.cells, "ops": args.ops,
                        "matrix": args.matrix,
                        "shapes": [dataclasses.asdict(s) for s in args.shapes],
                        "attn_shapes": [dataclasses.asdict(s) for s in args.attn_shapes]}
    meta["runtime_s"] = time.perf_counter() - started
    meta["other_processes_cores"] = other_load.cores_used()

    print(table_legend(meta, args))
    if rows:
        print(format_table(rows, device.type))
        print(compile_summary(rows))
    if attn_rows:
        print("\nattention (x reference: time / the reference's; peak x ref: peak memory / the "
              "reference's; fwd+bwd of the context, weights not returned)")
        print(format_table(attn_rows, device.type, ATTN_COLUMNS))
    if variant_rows:
        print("\nvariants (x plain: time / plain PyTorch's: for layernorm_lstm a loop with the "
              "input projection and its layer norm batched over steps, for headwise_lstm "
              "torch.nn.LSTM on the dense block-diagonal W_hh, for packed_* torch.nn on the "
              "same PackedSequence; max |diff|: output vs it)")
        print(format_table(variant_rows, device.type, VC.COLUMNS))
    if dec_rows:
        print("\n" + DC.format_rows(dec_rows))
    _print_warnings(rows, meta, args)
    write_json(args.out, meta, rows + attn_rows + variant_rows + dec_rows)
    print(f"json: {args.out}")
    if args.plot and rows:
        plot(args.plot, rows, meta)
    print(f"total {meta['runtime_s']:.0f} s")
    # measure.collect_garbage froze the survivors of each row; unfrozen, they are collected at
    # exit as usual (frozen, Triton's bindings report them as leaks).
    gc.unfreeze()
    return 0


# Beyond these, outputs differ by more than reordered fp32 (or half-precision) sums explain.
OUTPUT_DIFF_LIMIT = {"float32": 1e-3, "bfloat16": 1e-1, "float16": 2e-2}


def _print_warnings(rows: list, meta: dict, args) -> None:
    other = meta["other_processes_cores"]
    if other is not None and other > 0.1:
        print(f"warning: other processes kept {other:.1f} cores busy during the run; "
              "CPU timings from a busy machine are not worth keeping")
    before, after = meta["gemm"]["gflops_before"], meta["gemm"]["gflops_after"]
    if abs(before - after) > 0.1 * max(before, after):
        print(f"warning: the GEMM rate moved from {before:.0f} to {after:.0f} GFLOP/s "
              "during the run; the machine is not quiet, ratios are noisy")
    for r in rows:
        diff = r.get("max_abs_diff_vs_torch_nn")
        if diff is not None and diff > OUTPUT_DIFF_LIMIT[args.dtype]:
            print(f"warning: {r['cell']} B{r['B']} {r['implementation']} differs from torch.nn "
                  f"by up to {diff:.2e} on the benchmark input")


if __name__ == "__main__":
    sys.exit(main())
