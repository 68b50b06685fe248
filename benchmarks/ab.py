"""A/B of one benchmark row under variants of the environment (settings a process reads once:
``FUSED_RNN_CPU_SUM_ROWS``, ``FUSED_RNN_CPU_INPUT_GEMM``, ``FUSED_RNN_CPU_BF16``, ...). Each
variant runs in fresh processes, the variants alternating, ``--rounds`` times; the table
gives each variant's median over rounds of its median time and its ratio to the first
variant. On a noisy machine, alternation is what makes two settings comparable.

    python -m benchmarks.ab --cell lstm --shape 100,64,256,256 --dtype bfloat16 \\
        --variant FUSED_RNN_CPU_SUM_ROWS=512 --variant FUSED_RNN_CPU_SUM_ROWS=1000000
    python -m benchmarks.ab --variant - --variant FUSED_RNN_CPU_INPUT_GEMM=1 --mode fwd

A variant is ``-`` (the environment as it is) or comma-separated ``NAME=VALUE`` settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from . import cases as C
from .measure import time_ms
from .run import _shape_parser

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def parse_variant(text: str) -> dict:
    """``"-"`` -> {}; ``"A=1,B=2"`` -> {"A": "1", "B": "2"}."""
    if text == "-":
        return {}
    settings = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...] or -, got {text!r}")
        settings[name] = value
    return settings


def _child(args) -> None:
    """One process: the row's median and min ms, as JSON on the last line."""
    torch.set_num_threads(args.threads)
    workload = C.build_workload(args.cell, args.shape, dtype=_DTYPES[args.dtype])
    run = C.make_runner(workload, args.implementation, args.mode)
    timing = time_ms(run, torch.device("cpu"), args.warmup, args.repeats)
    print(json.dumps({"median_ms": timing.median_ms, "min_ms": timing.min_ms}))


def compare(args) -> list:
    """``[(variant text, median over rounds of the median ms, min ms)]`` in variant order."""
    forwarded = ["--cell", args.cell, "--shape", ",".join(map(str, vars(args.shape).values())),
                 "--mode", args.mode, "--dtype", args.dtype, "--implementation",
                 args.implementation, "--warmup", str(args.warmup), "--repeats",
                 str(args.repeats), "--threads", str(args.threads), "--child"]
    medians = {v: [] for v in args.variant}
    mins = {v: [] for v in args.variant}
    for _ in range(args.rounds):
        for v in args.variant:
            env = dict(os.environ, **parse_variant(v))
            done = subprocess.run([sys.executable, "-m", "benchmarks.ab", *forwarded], env=env,
                                  cwd=_ROOT, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            medians[v].append(row["median_ms"])
            mins[v].append(row["min_ms"])
    return [(v, statistics.median(medians[v]), min(mins[v])) for v in args.variant]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", choices=C.CELLS, default="lstm")
    p.add_argument("--shape", type=_shape_parser(C.Shape), default=C.SHAPES[0], help="T,B,I,H")
    p.add_argument("--mode", choices=C.MODES, default="fwd+bwd")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument("--implementation", default=C.FUSED_PREFIX + "cpu",
                   help=f"{C.TORCH_NN}, {C.CELL_LOOP} or {C.FUSED_PREFIX}<backend>")
    p.add_argument("--variant", action="append", default=None,
                   help="- or NAME=VALUE[,NAME=VALUE...]; give two or more (default: - alone)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    args.variant = args.variant or ["-"]
    for v in args.variant:
        try:
            parse_variant(v)  # a malformed variant fails here, before any child runs
        except argparse.ArgumentTypeError as e:
            p.error(f"--variant: {e}")
    rows = compare(args)
    base = rows[0][1]
    print(f"{args.cell} {args.shape.label} {args.mode} {args.dtype} {args.implementation}, "
          f"{args.threads} threads: {args.rounds} rounds of fresh processes, variants alternating")
    print(f"{'variant':>40} | median ms | min ms | x first")
    for v, median, least in rows:
        print(f"{v:>40} | {median:>9.2f} | {least:>6.2f} | {median / base:.2f}")


if __name__ == "__main__":
    main()
