"""Attention rows of the benchmarks: each fused backend against the reference (plain
PyTorch, which materialises [B, Tq, Tk, A] for the additive score), per score kind.

Shared by ``benchmarks/run.py`` and ``benchmarks/test_bench_attention.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

import fused_rnn
from fused_rnn.functional import attention

from .measure import drop_grads

KINDS = ("additive", "dot", "general")
MODES = ("fwd", "fwd+bwd")
REFERENCE = "reference"


@dataclasses.dataclass(frozen=True)
class AttnShape:
    """query [B, Tq, D], keys and values [B, Tk, D] (additive: D is the attention size A)."""

    B: int
    Tq: int
    Tk: int
    D: int

    @property
    def label(self) -> str:
        return f"B{self.B} Tq{self.Tq} Tk{self.Tk} D{self.D}"


# The teacher-forced additive case, and one decoder step over a long source.
SHAPES = (AttnShape(B=32, Tq=32, Tk=64, D=256), AttnShape(B=16, Tq=1, Tk=512, D=256))
# DESIGN.md's GPU matrix: decoder steps over short to long sources.
GPU_SHAPES = tuple(AttnShape(B=b, Tq=1, Tk=tk, D=d) for b in (1, 16, 64)
                   for tk in (128, 512, 4096) for d in (256, 1024)) + SHAPES[:1]
MATRICES = {"cpu": SHAPES, "gpu": GPU_SHAPES}


@dataclasses.dataclass(frozen=True)
class AttnCase:
    kind: str
    shape: AttnShape
    mode: str

    @property
    def id(self) -> str:
        return f"attn-{self.kind}-{self.shape.label.replace(' ', '-')}-{self.mode}"

    def min_bytes(self, itemsize: int) -> int:
        """The least memory traffic of the row: every tensor the caller passes in read once,
        every tensor handed back written once. Forward: query, keys, values, the score's
        parameter (v [D] or W [D, D]) and the int64 lengths in, the context [B, Tq, D] out.
        fwd+bwd adds the context's gradient in and one gradient per input out."""
        s = self.shape
        parameter = {"additive": s.D, "general": s.D * s.D}.get(self.kind, 0)
        inputs = s.B * s.Tq * s.D + 2 * s.B * s.Tk * s.D + parameter
        context = s.B * s.Tq * s.D
        elements = inputs + context
        if self.mode == "fwd+bwd":
            elements += context + inputs
        return elements * itemsize + s.B * 8  # lengths: int64 whatever the dtype


def all_cases(kinds=KINDS, shapes=SHAPES, modes=MODES) -> list:
    return [AttnCase(k, s, m) for k in kinds for s in shapes for m in modes]


def build_inputs(case: AttnCase, device="cpu", dtype=torch.float32, seed: int = 0) -> dict:
    """Leaves requiring grad (as in training) and per-row source lengths."""
    s = case.shape
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *shape: torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_()  # noqa: E731
    inputs = {"query": mk(s.B, s.Tq, s.D), "keys": mk(s.B, s.Tk, s.D), "values": mk(s.B, s.Tk, s.D),
              "lengths": torch.randint(1, s.Tk + 1, (s.B,), generator=gen)}
    if case.kind == "additive":
        inputs["v"] = mk(s.D)
    if case.kind == "general":
        inputs["weight"] = (torch.randn(s.D, s.D, generator=gen) / s.D ** 0.5).to(device, dtype).requires_grad_()
    return inputs


def make_runner(case: AttnCase, inputs: dict, backend: str) -> Callable[[], None]:
    """One timed iteration: forward (no grad, no weights) or forward+backward of the context."""
    kwargs = {k: v for k, v in inputs.items() if k not in ("query", "keys", "values")}

    def forward():
        with fused_rnn.use_backend(backend):
            return attention(inputs["query"], inputs["keys"], inputs["values"], score=case.kind,
                             need_weights=False, **kwargs)[0]

    if case.mode == "fwd":
        def run_forward():
            with torch.no_grad():
                forward()
        return run_forward

    leaves = [t for t in inputs.values() if t.requires_grad]

    def run_forward_backward():
        forward().sum().backward()
        drop_grads(leaves)

    return run_forward_backward


def unsupported_reason(case: AttnCase, inputs: dict, backend: str) -> Optional[str]:
    try:
        make_runner(AttnCase(case.kind, case.shape, "fwd"), inputs, backend)()
    except fused_rnn.BackendError as err:
        return str(err)
    return None
