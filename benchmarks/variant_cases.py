"""Variant rows of the benchmarks, forward and forward+backward, each against what a
PyTorch user runs without fused_rnn (the row ``plain-pytorch``), on the same parameters:

- ``layernorm_lstm``: ``LayerNormLSTM`` on each fused backend with the variants op, against
  a fair plain implementation: the input projection and its layer norm for all steps at
  once (one GEMM, one ``F.layer_norm``), then the per-step loop with ``F.layer_norm``;
  autograd for backward.
- ``headwise_lstm``: ``LSTM(num_heads=8)`` on each fused backend (one recurrence per head),
  against ``torch.nn.LSTM`` (oneDNN on CPU, cuDNN on GPU) given the dense block-diagonal
  ``W_hh`` (``fused_rnn.headwise_to_dense`` of the blocks, so gradients reach them).
- ``packed_lstm``, ``packed_gru``: the fused module on a PackedSequence of mixed lengths
  (uniform in 1..T, the longest T: about half the padded batch's steps), against
  ``torch.nn.LSTM``/``GRU`` on the same PackedSequence and Parameters.

Shared by ``benchmarks/run.py`` (``--ops variants``) and ``benchmarks/test_bench_variants.py``.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import backends
from fused_rnn.modules.packed import PackedLayout

from .cases import Shape
from .measure import drop_grads, time_ms

MODES = ("fwd", "fwd+bwd")
PLAIN = "plain-pytorch"
FUSED_PREFIX = "fused_rnn:"
HEADS = 8


def plain_layer_norm_lstm(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Layer 0 of LayerNormLSTM ``m`` on x [T, B, I] from zero state: output [T, B, H]."""
    H = m.hidden_size
    gi = F.layer_norm(F.linear(x, m.weight_ih_l0), (4 * H,), m.layer_norm_ih_l0) + m.bias_ih_l0
    h = x.new_zeros(x.shape[1], H)
    c = torch.zeros_like(h)
    ys = []
    for t in range(x.shape[0]):
        a = gi[t] + F.layer_norm(F.linear(h, m.weight_hh_l0), (4 * H,), m.layer_norm_hh_l0,
                                 m.bias_hh_l0)
        i, f, g, o = a.chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * F.layer_norm(c, (H,), m.layer_norm_c_weight_l0, m.layer_norm_c_bias_l0).tanh()
        ys.append(h)
    return torch.stack(ys)


def dense_torch_lstm(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Headwise LSTM ``m`` (one layer) on x [T, B, I] from zero state, as torch.nn.LSTM on
    the dense block-diagonal W_hh: output [T, B, H]."""
    twin = torch.nn.LSTM(m.input_size, m.hidden_size, device="meta")
    weights = {"weight_ih_l0": m.weight_ih_l0, "weight_hh_l0": fused_rnn.headwise_to_dense(m.weight_hh_l0),
               "bias_ih_l0": m.bias_ih_l0, "bias_hh_l0": m.bias_hh_l0}
    return torch.func.functional_call(twin, weights, (x,))[0]


class PackedRun(torch.nn.Module):
    """``rnn`` on x [T, B, I] packed with fixed ``lengths``, as a caller with PackedSequence
    runs it; the output comes back padded through one gather (fused_rnn's PackedLayout), the
    same for every implementation, so that dy [T, B, H] applies. ``twin`` is torch.nn's
    module on the same Parameters."""

    def __init__(self, rnn: torch.nn.Module, twin: torch.nn.Module, lengths: torch.Tensor):
        super().__init__()
        self.rnn, self.twin, self.lengths = rnn, twin, lengths

    def run(self, module: torch.nn.Module, x: torch.Tensor) -> tuple:
        out = module(pack_padded_sequence(x, self.lengths, enforce_sorted=False))[0]
        return (PackedLayout(out).pad(out.data),)

    def forward(self, x: torch.Tensor) -> tuple:
        return self.run(self.rnn, x)


def _packed(cell: str) -> Callable:
    def build(shape: Shape, gen: torch.Generator) -> PackedRun:
        fused = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}[cell](shape.I, shape.H)
        twin = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](shape.I, shape.H)
        for name in twin._flat_weights_names:
            setattr(twin, name, getattr(fused, name))
        lengths = torch.randint(1, shape.T + 1, (shape.B,), generator=gen)
        lengths[0] = shape.T
        return PackedRun(fused, twin, lengths)
    return build


def _layer_norm_lstm(shape: Shape, gen: torch.Generator) -> torch.nn.Module:
    module = fused_rnn.LayerNormLSTM(shape.I, shape.H)
    with torch.no_grad():  # gains and shifts away from 1 and 0, as after training
        for name, p in module.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return module


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    op: str  # the backends' op its fused rows run
    shapes: tuple
    build: Callable  # (shape, generator) -> the fused module, one layer
    plain: Callable  # (module, x) -> output [T, B, H], without fused_rnn


VARIANTS = {v.name: v for v in (
    Variant("layernorm_lstm", "variants", (Shape(T=100, B=64, I=256, H=256),),  # issue 10's case
            _layer_norm_lstm, plain_layer_norm_lstm),
    Variant("headwise_lstm", "recurrence", (Shape(T=50, B=64, I=256, H=1024),),
            lambda shape, gen: fused_rnn.LSTM(shape.I, shape.H, num_heads=HEADS), dense_torch_lstm),
    *(Variant(f"packed_{cell}", "recurrence", (Shape(T=100, B=64, I=256, H=256),),
              _packed(cell), lambda m, x: m.run(m.twin, x)[0]) for cell in ("lstm", "gru")),
)}


@dataclasses.dataclass(frozen=True)
class VariantCase:
    variant: Variant
    shape: Shape
    mode: str

    @property
    def id(self) -> str:
        return f"{self.variant.name}-{self.shape.label.replace(' ', '-')}-{self.mode}"


def all_cases(variants=tuple(VARIANTS.values()), modes=MODES) -> list:
    return [VariantCase(v, s, m) for v in variants for s in v.shapes for m in modes]


def implementation_names(fused_backends, variant: Variant) -> list:
    """The plain implementation, then each given backend that has the variant's op."""
    return [PLAIN] + [FUSED_PREFIX + b for b in fused_backends
                      if variant.op in backends.get_backend(b).modules]


@dataclasses.dataclass
class Workload:
    variant: Variant
    module: torch.nn.Module  # the fused module, one layer; the plain one reads its parameters
    x: torch.Tensor  # [T, B, I], a leaf requiring grad
    dy: torch.Tensor  # [T, B, H]


def build_workload(variant: Variant, shape: Shape, device="cpu", dtype=torch.float32,
                   seed: int = 0) -> Workload:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = variant.build(shape, gen).to(device, dtype)
    x = torch.randn(shape.T, shape.B, shape.I, generator=gen).to(device, dtype)
    dy = torch.randn(shape.T, shape.B, shape.H, generator=gen).to(device, dtype)
    return Workload(variant, module, x.requires_grad_(), dy)


def forward_fn(workload: Workload, implementation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if implementation == PLAIN:
        return lambda x: workload.variant.plain(workload.module, x)
    backend = implementation[len(FUSED_PREFIX):]

    def fused_forward(x):
        with fused_rnn.use_backend(backend):
            return workload.module(x)[0]

    return fused_forward


def make_runner(workload: Workload, implementation: str, mode: str) -> Callable[[], None]:
    forward = forward_fn(workload, implementation)
    if mode == "fwd":
        def run_forward():
            with torch.no_grad():
                forward(workload.x)
        return run_forward
    params = list(workload.module.parameters())

    def run_forward_backward():
        forward(workload.x).backward(workload.dy)
        drop_grads([workload.x, *params])

    return run_forward_backward


def max_abs_diff_vs_plain(workload: Workload, implementation: str) -> float:
    """A timed row must compute what the plain loop computes, or its time means nothing."""
    with torch.no_grad():
        got = forward_fn(workload, implementation)(workload.x)
        expected = workload.variant.plain(workload.module, workload.x)
    return (got.float() - expected.float()).abs().max().item()


def unsupported_reason(workload: Workload, implementation: str) -> Optional[str]:
    if implementation == PLAIN:
        return None
    try:
        with torch.no_grad():
            forward_fn(workload, implementation)(workload.x)
    except fused_rnn.BackendError as err:
        return str(err)
    return None


def measure_rows(fused_backends, device: torch.device, dtype: torch.dtype, warmup: int,
                 repeats: int, variants=tuple(VARIANTS.values())) -> list:
    """One row per (case, implementation), all in this process; ``vs_plain`` is the row's
    median time over the plain implementation's (below 1 = faster). The implementations of a
    case take turns run by run, so that a change of load on a shared machine falls on all
    of them."""
    rows = []
    for variant, shape in ((v, s) for v in variants for s in v.shapes):
        workload = build_workload(variant, shape, device, dtype)
        for mode in MODES:
            timed = {}
            for implementation in implementation_names(fused_backends, variant):
                row = {"variant": variant.name, "T": shape.T, "B": shape.B, "I": shape.I,
                       "H": shape.H, "mode": mode, "implementation": implementation}
                rows.append(row)
                reason = unsupported_reason(workload, implementation)
                if reason:
                    row["skipped"] = reason
                else:
                    timed[implementation] = (row, make_runner(workload, implementation, mode))
            for _ in range(warmup):
                for _, run in timed.values():
                    run()
            times = {name: [] for name in timed}
            for _ in range(repeats):
                for name, (_, run) in timed.items():
                    times[name].append(time_ms(run, device, 0, 1).times_ms[0])
            for name, (row, _) in timed.items():
                t = sorted(times[name])
                row.update(median_ms=statistics.median(t), min_ms=t[0], max_ms=t[-1],
                           times_ms=times[name], warmup=warmup, repeats=repeats,
                           max_abs_diff_vs_plain=max_abs_diff_vs_plain(workload, name))
                print(f"  {variant.name} {shape.label} {mode:7} {name}: {row['median_ms']:.1f} ms",
                      file=sys.stderr, flush=True)
    key = lambda r: (r["variant"], r["T"], r["B"], r["I"], r["H"], r["mode"])  # noqa: E731
    plain = {key(r): r["median_ms"] for r in rows if r["implementation"] == PLAIN and "median_ms" in r}
    for r in rows:
        base = plain.get(key(r))
        if base and "median_ms" in r:
            r["vs_plain"] = r["median_ms"] / base
    return rows


COLUMNS = (
    ("variant", 14, lambda r: r["variant"]),
    ("shape", 20, lambda r: f"T{r['T']} B{r['B']} I{r['I']} H{r['H']}"),
    ("mode", 7, lambda r: r["mode"]),
    ("implementation", 20, lambda r: r["implementation"]),
    ("median ms", 9, lambda r: f"{r['median_ms']:.2f}"),
    ("min ms", 8, lambda r: f"{r['min_ms']:.2f}"),
    ("x plain", 7, lambda r: "-" if r.get("vs_plain") is None else f"{r['vs_plain']:.3f}"),
    ("max |diff|", 10, lambda r: f"{r['max_abs_diff_vs_plain']:.1e}"),
)
