"""Per-call cost of the cells, fused vs torch.nn, as a decoder loop calls them: one
``LSTMCell``/``GRUCell``/``RNNCell`` call without grad (greedy decoding), and a loop of
``steps`` calls followed by one backward (teacher forcing). The two implementations run
interleaved in one process, with the same weights; the ratio is of medians.

    python -m benchmarks.cell_calls                     # the default sizes
    python -m benchmarks.cell_calls --sizes 1x256 16x512 --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fused_rnn

CELLS = ("LSTMCell", "GRUCell", "RNNCell")
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


def rows(cells=CELLS, sizes=SIZES, repeats: int = 30, steps: int = 10) -> list:
    """``(cell, B, H, mode, torch.nn us, fused us)`` per cell, size and mode."""
    out = []
    for cell in cells:
        for B, H in sizes:
            ref, fused = _pair(cell, H)
            x = torch.randn(B, H)
            t_ref, t_fused = _median_us([lambda: _call(ref, x), lambda: _call(fused, x)], repeats)
            out.append((cell, B, H, "call", t_ref, t_fused))
            xg = x.clone().requires_grad_(True)
            t_ref, t_fused = _median_us([lambda: _loop(ref, xg, steps), lambda: _loop(fused, xg, steps)],
                                        max(3, repeats // 3))
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
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads, float32, torch {torch.__version__}; median us, "
          "torch.nn and fused interleaved")
    print(f"{'cell':>8} | {'B':>3} | {'H':>5} | {'mode':>14} | {'torch.nn us':>11} | "
          f"{'fused us':>9} | x torch.nn")
    for cell, B, H, mode, t_ref, t_fused in rows(args.cells, args.sizes, args.repeats, args.steps):
        print(f"{cell:>8} | {B:>3} | {H:>5} | {mode:>14} | {t_ref:>11.1f} | {t_fused:>9.1f} | "
              f"{t_fused / t_ref:.2f}")


if __name__ == "__main__":
    main()
