"""Per-call cost of the cells, fused vs torch.nn, as a decoder loop calls them: one
``LSTMCell``/``GRUCell``/``RNNCell`` call without grad (greedy decoding), and a loop of
``steps`` calls followed by one backward (teacher forcing). The calls run interleaved in
one process, with the same weights; the loops (whose time depends on what the allocator
kept from the run before: two implementations in one process share its heap) each in a
fresh process of their own, alternating, ``--rounds`` times. Ratios are of medians.

    python -m benchmarks.cell_calls                     # the default sizes
    python -m benchmarks.cell_calls --sizes 1x256 16x512 --repeats 50
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time

import torch

import fused_rnn

CELLS = ("LSTMCell", "GRUCell", "RNNCell")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ((1, 256), (1, 512), (16, 512), (64, 1024))


def _pair(cell: str, H: int):
    ref = getattr(torch.nn, cell)(H, H)
    fused = getattr(fused_rnn, cell)(H, H)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _call(m, x):
    with torch.no_grad():
        m(x)


def _loop(m, x, steps: int):
    state, outs = None, []
    for _ in range(steps):
        state = m(x, state)
        outs.append(state[0] if isinstance(state, tuple) else state)
    sum(o.sum() for o in outs).backward()
    x.grad = None
    for p in m.parameters():
        p.grad = None


def _median_us(fns, repeats: int, warmup: int = 3) -> list:
    times = [[] for _ in fns]
    for i in range(warmup + repeats):
        for f, ts in zip(fns, times):
            t = time.perf_counter()
            f()
            if i >= warmup:
                ts.append(time.perf_counter() - t)
    return [statistics.median(ts) * 1e6 for ts in times]


def _loop_us(cell: str, B: int, H: int, which: str, steps: int, repeats: int) -> float:
    """Median us of ``repeats`` loops of one implementation (``which``: torch.nn or fused)."""
    ref, fused = _pair(cell, H)
    x = torch.randn(B, H, requires_grad=True)
    m = ref if which == "torch.nn" else fused
    return _median_us([lambda: _loop(m, x, steps)], repeats)[0]


def _loop_us_isolated(cell, B, H, steps, repeats, rounds, threads) -> list:
    """``[torch.nn us, fused us]``: medians over ``rounds`` of fresh processes, alternating."""
    times = {"torch.nn": [], "fused": []}
    for _ in range(rounds):
        for which in times:
            args = ["--child-loop", cell, str(B), str(H), which, "--steps", str(steps),
                    "--repeats", str(repeats), "--threads", str(threads)]
            done = subprocess.run([sys.executable, "-m", "benchmarks.cell_calls", *args],
                                  capture_output=True, text=True, check=True, cwd=_ROOT)
            times[which].append(float(done.stdout.split()[-1]))
    return [statistics.median(times["torch.nn"]), statistics.median(times["fused"])]


def rows(cells=CELLS, sizes=SIZES, repeats: int = 30, steps: int = 10, rounds: int = 0,
         threads: int = 2) -> list:
    """``(cell, B, H, mode, torch.nn us, fused us)`` per cell, size and mode; the loops in
    ``rounds`` pairs of fresh processes, or interleaved in this one with ``rounds=0``."""
    out = []
    for cell in cells:
        for B, H in sizes:
            ref, fused = _pair(cell, H)
            x = torch.randn(B, H)
            t_ref, t_fused = _median_us([lambda: _call(ref, x), lambda: _call(fused, x)], repeats)
            out.append((cell, B, H, "call", t_ref, t_fused))
            loops = max(3, repeats // 3)
            if rounds:
                t_ref, t_fused = _loop_us_isolated(cell, B, H, steps, loops, rounds, threads)
            else:
                xg = x.clone().requires_grad_(True)
                t_ref, t_fused = _median_us([lambda: _loop(ref, xg, steps),
                                             lambda: _loop(fused, xg, steps)], loops)
            out.append((cell, B, H, f"{steps} calls+bwd", t_ref, t_fused))
    return out


def _size(text: str):
    B, H = text.lower().split("x")
    return int(B), int(H)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--sizes", nargs="+", type=_size, default=list(SIZES), help="BxH, e.g. 16x512")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3,
                   help="fresh-process pairs per training loop row (0: interleaved in this one)")
    p.add_argument("--child-loop", nargs=4, metavar=("CELL", "B", "H", "WHICH"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_loop:
        cell, B, H, which = args.child_loop
        print(_loop_us(cell, int(B), int(H), which, args.steps, args.repeats))
        return
    from .run import _device_name, _git

    commit = (_git("rev-parse", "HEAD") or "?")[:10]
    print(f"{_device_name(torch.device('cpu'))} (cpu), commit {commit}, "
          f"{datetime.date.today()}, python -m benchmarks.cell_calls")
    print(f"{torch.get_num_threads()} threads, float32, torch {torch.__version__}; median us; "
          "calls interleaved, " + (f"loops in {args.rounds} fresh-process pairs" if args.rounds
                                   else "loops interleaved"))
    print(f"{'cell':>8} | {'B':>3} | {'H':>5} | {'mode':>14} | {'torch.nn us':>11} | "
          f"{'fused us':>9} | x torch.nn")
    for cell, B, H, mode, t_ref, t_fused in rows(args.cells, args.sizes, args.repeats, args.steps,
                                                 args.rounds, args.threads):
        print(f"{cell:>8} | {B:>3} | {H:>5} | {mode:>14} | {t_ref:>11.1f} | {t_fused:>9.1f} | "
              f"{t_fused / t_ref:.2f}")


if __name__ == "__main__":
    main()
