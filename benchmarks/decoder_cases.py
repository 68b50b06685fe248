"""Decoder-step rows: :class:`fused_rnn.AttentionDecoderCell` against the same step built
from torch.nn parts (``TorchPartsDecoderStep``), per decoder step, as a ratio measured in
one process with the two implementations interleaved.

- ``fwd``: greedy decoding's step (no grad, attention weights returned): ``steps`` decoder
  steps, each fed its own input, timed together and divided by ``steps``;
- ``fwd+bwd``: teacher forcing over ``steps`` steps, then backward, per step.

Shared by ``benchmarks/run.py --ops decoder``, ``benchmarks/test_bench_decoder.py`` and the
parity tests (``tests/test_decoder.py``), which hold the fused step to this oracle.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from typing import Callable

import torch
from torch import nn

import fused_rnn

from .measure import drop_grads

CELLS = ("lstm", "gru")
MODES = ("fwd", "fwd+bwd")
IMPLEMENTATIONS = ("torch.nn parts", "fused")


class TorchPartsDecoderStep(nn.Module):
    """The decoder step of fused_rnn.AttentionDecoderCell (additive score), in torch.nn
    parts: Linear query and key projections, tanh, v, masked softmax, bmm, cat, a
    torch.nn LSTMCell / GRUCell. ``state_dict`` keys: ``query_proj.*``, ``key_proj.*``,
    ``v``, ``cell.*`` (:func:`to_fused_state_dict` maps them)."""

    def __init__(self, input_size, hidden_size, key_size, attn_size, cell="lstm", dtype=None):
        super().__init__()
        kw = {"dtype": dtype}
        self.query_proj = nn.Linear(hidden_size, attn_size, **kw)
        self.key_proj = nn.Linear(key_size, attn_size, bias=False, **kw)
        self.v = nn.Parameter(torch.empty(attn_size, **kw).uniform_(-attn_size ** -0.5, attn_size ** -0.5))
        cls = nn.LSTMCell if cell == "lstm" else nn.GRUCell
        self.cell = cls(input_size + key_size, hidden_size, **kw)
        self.lstm = cell == "lstm"

    def project_keys(self, keys):
        return self.key_proj(keys)

    def forward(self, input, state, keys, projected_keys, valid):
        """valid [B, Tk] bool (True = attend); returns ``(state', context, weights)``."""
        h = state[0] if self.lstm else state
        e = torch.tanh(self.query_proj(h).unsqueeze(1) + projected_keys) @ self.v  # [B, Tk]
        w = e.masked_fill(~valid, float("-inf")).softmax(-1)
        context = torch.bmm(w.unsqueeze(1), keys).squeeze(1)
        return self.cell(torch.cat([input, context], -1), state), context, w


def to_fused_state_dict(parts_state: dict) -> dict:
    """TorchPartsDecoderStep's state_dict -> AttentionDecoderCell's (additive score)."""
    rename = {"query_proj.": "attention.query_proj.", "key_proj.": "attention.key_proj.",
              "v": "attention.v", "cell.": "cell."}
    out = {}
    for k, t in parts_state.items():
        prefix = next(p for p in rename if k == p or k.startswith(p))
        out[rename[prefix] + k[len(prefix):]] = t
    return out


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    """Embedding E, hidden H, encoder states Tk x K (keys = values), additive size A."""

    B: int = 16
    H: int = 256
    Tk: int = 50
    K: int = 256
    E: int = 256
    A: int = 256
    steps: int = 20

    @property
    def label(self) -> str:
        return f"B{self.B} H{self.H} Tk{self.Tk} K{self.K} E{self.E} A{self.A}"


SHAPES = (DecoderShape(),)


@dataclasses.dataclass(frozen=True)
class DecoderCase:
    cell: str
    shape: DecoderShape
    mode: str

    @property
    def id(self) -> str:
        return f"decoder-{self.cell}-{self.shape.label.replace(' ', '-')}-{self.mode}"


def all_cases(cells=CELLS, shapes=SHAPES, modes=MODES) -> list:
    return [DecoderCase(c, s, m) for c in cells for s in shapes for m in modes]


def build_pair(cell: str, shape: DecoderShape, dtype=torch.float32, seed: int = 0):
    """``(parts, fused)``: the two steps on the same weights."""
    torch.manual_seed(seed)
    s = shape
    parts = TorchPartsDecoderStep(s.E, s.H, s.K, s.A, cell, dtype=dtype)
    fused = fused_rnn.AttentionDecoderCell(s.E, s.H, s.K, s.A, cell=cell, dtype=dtype)
    fused.load_state_dict(to_fused_state_dict(parts.state_dict()))
    return parts, fused


def build_inputs(shape: DecoderShape, dtype=torch.float32, seed: int = 0) -> dict:
    s = shape
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *size: torch.randn(*size, generator=gen, dtype=dtype)  # noqa: E731
    lengths = torch.randint(1, s.Tk + 1, (s.B,), generator=gen)
    lengths[0] = s.Tk
    return {"xs": mk(s.steps, s.B, s.E), "h0": mk(s.B, s.H).tanh(), "c0": mk(s.B, s.H),
            "keys": mk(s.B, s.Tk, s.K), "lengths": lengths}


def make_runner(case: DecoderCase, step: nn.Module, inputs: dict) -> Callable[[], None]:
    """``steps`` decoder steps (fwd: no grad; fwd+bwd: then backward of the final state and
    every context, which reaches every parameter)."""
    keys, lengths = inputs["keys"], inputs["lengths"]
    valid = torch.arange(keys.shape[1]) < lengths[:, None]
    fused = isinstance(step, fused_rnn.AttentionDecoderCell)
    state0 = (inputs["h0"], inputs["c0"]) if case.cell == "lstm" else inputs["h0"]

    def run():
        pk = step.project_keys(keys)
        state, total = state0, 0
        if fused:
            with step.weights_unchanged():  # as AttentionDecoder runs its steps
                for x in inputs["xs"]:
                    state, context, _ = step(x, state, keys, pk, mask=valid)
                    total = total + context.sum()
        else:
            for x in inputs["xs"]:
                state, context, _ = step(x, state, keys, pk, valid)
                total = total + context.sum()
        return total + (state[0] if case.cell == "lstm" else state).sum()

    if case.mode == "fwd":
        def forward():
            with torch.no_grad():
                run()
        return forward

    params = list(step.parameters())

    def forward_backward():
        run().backward()
        drop_grads(params)

    return forward_backward


def per_step_us(total_ms: float, shape: DecoderShape) -> float:
    return total_ms * 1e3 / shape.steps


def measure(warmup: int, repeats: int, dtype=torch.float32, cases=None) -> list:
    """One row per case: both implementations timed in alternation (A, B, A, B, ...), so a
    change in the machine's load hits both; the speed-up is the median of the per-round
    ratios torch.nn parts / fused, with their min and max as the spread."""
    rows = []
    for case in cases or all_cases():
        parts, fused = build_pair(case.cell, case.shape, dtype)
        inputs = build_inputs(case.shape, dtype)
        runners = {"torch.nn parts": make_runner(case, parts, inputs),
                   "fused": make_runner(case, fused, inputs)}
        for _ in range(max(warmup, 1)):
            for run in runners.values():
                run()
        times = {name: [] for name in runners}
        for _ in range(repeats):
            for name, run in runners.items():
                started = time.perf_counter()
                run()
                times[name].append(per_step_us((time.perf_counter() - started) * 1e3, case.shape))
        ratios = sorted(a / b for a, b in zip(times["torch.nn parts"], times["fused"]))
        rows.append({"op": "decoder", "cell": case.cell, "mode": case.mode,
                     **dataclasses.asdict(case.shape), "dtype": str(dtype).replace("torch.", ""),
                     "torch_parts_us_per_step": statistics.median(times["torch.nn parts"]),
                     "fused_us_per_step": statistics.median(times["fused"]),
                     "speedup": statistics.median(ratios), "speedup_min": ratios[0],
                     "speedup_max": ratios[-1], "repeats": repeats,
                     "times_us": times})
        print(f"  decoder {case.cell} {case.mode:7}: {rows[-1]['speedup']:.2f} x",
              file=sys.stderr, flush=True)
    return rows


def format_rows(rows: list) -> str:
    lines = ["decoder step (us per step, medians; speed-up = torch.nn parts / fused per "
             "alternating round: median [min, max])",
             f"{'cell':5} {'shape':36} {'mode':7} {'torch.nn parts':>14} {'fused':>8} {'speed-up':>20}"]
    for r in rows:
        shape = DecoderShape(**{f.name: r[f.name] for f in dataclasses.fields(DecoderShape)})
        lines.append(f"{r['cell']:5} {shape.label:36} {r['mode']:7} "
                     f"{r['torch_parts_us_per_step']:14.0f} {r['fused_us_per_step']:8.0f} "
                     f"{r['speedup']:6.2f} [{r['speedup_min']:.2f}, {r['speedup_max']:.2f}]")
    return "\n".join(lines)
