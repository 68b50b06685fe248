"""What the benchmarks time: shapes, modes, implementations, and one callable per row.

Shared by ``benchmarks/run.py`` and ``benchmarks/test_bench_recurrence.py`` so the two can
never time different things. Every implementation of one (cell, shape) runs on the same
weights and the same input, and fwd+bwd uses the same fixed upstream gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

import fused_rnn

from .measure import drop_grads

CELLS = ("lstm", "gru", "rnn")  # rnn: tanh
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
MODES = ("fwd", "fwd+bwd")

# The baselines; every fused backend adds a row named FUSED_PREFIX + backend name.
TORCH_NN = "torch.nn"
CELL_LOOP = "cell-loop"
# torch.compile of the cell's step inside the same Python loop. The step, not the whole loop:
# dynamo unrolls a loop over time, and compiling T=100 unrolled steps took ~20 s forward and
# ~65 s fwd+bwd per shape on the 2-core CPU machine (and grows with T: T=1024 on the GPU
# matrix), while one step compiles in seconds and is where inductor fuses the pointwise work.
COMPILED_CELL_LOOP = "cell-loop-compiled"
FUSED_PREFIX = "fused_rnn:"
# A fused backend whose training forward keeps its states alone, the backward recomputing
# the gate activations (fused_rnn.use_recompute): less memory for the forward's GEMMs again.
# A row of its own where that changes anything: fwd+bwd of LSTM and GRU.
RECOMPUTE_SUFFIX = "+recompute"
RECOMPUTING_BACKENDS = ("cpu",)

_RNN_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
_CELL_CLASSES = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}
_FUSED_CLASSES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "rnn": fused_rnn.RNN}


@dataclasses.dataclass(frozen=True)
class Shape:
    """Sizes of one single-layer, unidirectional, time-major run: x [T, B, I], h [B, H]."""

    T: int
    B: int
    I: int  # noqa: E741 (the paper name of the input size)
    H: int

    @property
    def label(self) -> str:
        return f"T{self.T} B{self.B} I{self.I} H{self.H}"


# DESIGN.md's CPU target shape, then small-batch and single-sequence (decoder-style) ones.
SHAPES = (Shape(T=100, B=64, I=256, H=256), Shape(T=100, B=16, I=256, H=256),
          Shape(T=100, B=1, I=256, H=256))
# DESIGN.md's GPU matrix: fastrnns, FlashRNN's shape, then batch x hidden size at T=512.
GPU_SHAPES = (Shape(T=100, B=64, I=512, H=512), Shape(T=1024, B=16, I=768, H=768)) + tuple(
    Shape(T=512, B=b, I=h, H=h) for b in (1, 16, 64, 256) for h in (256, 512, 1024))
MATRICES = {"cpu": SHAPES, "gpu": GPU_SHAPES}
MEMORY_BOUND_MAX_BATCH = 16


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row apart from its implementation."""

    cell: str
    shape: Shape
    mode: str

    @property
    def id(self) -> str:
        return f"{self.cell}-{self.shape.label.replace(' ', '-')}-{self.mode}"

    def forward_flops(self) -> int:
        """GEMM FLOPs of the forward pass: per step, the input and the recurrent projections,
        2*B*G*H*(I+H) with G gates. Pointwise work is left out: it is a few percent."""
        s = self.shape
        return s.T * 2 * s.B * GATES[self.cell] * s.H * (s.I + s.H)

    def flops(self) -> int:
        """fwd+bwd adds two GEMMs per forward GEMM (gradients of the data and of the
        weights), so it is 3x the forward."""
        return self.forward_flops() * (3 if self.mode == "fwd+bwd" else 1)

    def min_bytes(self, itemsize: int) -> int:
        """The least memory traffic of the row: every tensor the caller passes in read once,
        every tensor handed back written once. Forward: x [T, B, I] and the weights in; y
        [T, B, H] and the final state out. fwd+bwd adds dy in and dx and the weight gradients
        out (intermediates are free: they could stay on chip)."""
        s, gates = self.shape, GATES[self.cell]
        weights = gates * s.H * (s.I + s.H) + 2 * gates * s.H  # W_ih, W_hh, b_ih, b_hh
        x, y = s.T * s.B * s.I, s.T * s.B * s.H
        final_state = (2 if self.cell == "lstm" else 1) * s.B * s.H
        elements = x + weights + y + final_state
        if self.mode == "fwd+bwd":
            elements += y + x + weights  # dy read; dx and the weight gradients written
        return elements * itemsize

    @property
    def memory_bound(self) -> bool:
        """Small batches: each step's GEMM is too thin to keep the cores busy on arithmetic,
        so the row is also rated against the copy bandwidth."""
        return self.shape.B <= MEMORY_BOUND_MAX_BATCH


def all_cases(cells=CELLS, shapes=SHAPES, modes=MODES) -> list:
    return [Case(c, s, m) for c in cells for s in shapes for m in modes]


def implementation_names(fused_backends) -> list:
    fused = []
    for b in fused_backends:
        fused += [FUSED_PREFIX + b] + [FUSED_PREFIX + b + RECOMPUTE_SUFFIX] * (
            b in RECOMPUTING_BACKENDS)
    return [TORCH_NN, CELL_LOOP, COMPILED_CELL_LOOP] + fused


def fused_backend_of(implementation: str) -> Optional[str]:
    """The fused_rnn backend an implementation name forces, or None for a baseline."""
    if implementation.startswith(FUSED_PREFIX):
        return implementation[len(FUSED_PREFIX):].removesuffix(RECOMPUTE_SUFFIX)
    return None


def recomputes(implementation: str) -> bool:
    """Whether an implementation recomputes the activations in backward."""
    return fused_backend_of(implementation) is not None and implementation.endswith(
        RECOMPUTE_SUFFIX)


def same_as_another_row(case, implementation: str) -> Optional[str]:
    """Why a row would repeat another row's work (then it is left out), or None."""
    if recomputes(implementation) and (case.mode == "fwd" or case.cell == "rnn"):
        return "recompute changes only the fwd+bwd of LSTM and GRU (an RNN saves no activations)"
    return None


@dataclasses.dataclass
class Workload:
    """Everything one (cell, shape) runs on: three modules sharing one set of weights, the
    input (a leaf that requires grad, as in training) and the upstream gradient."""

    cell: str
    shape: Shape
    torch_rnn: torch.nn.RNNBase
    cell_module: torch.nn.RNNCellBase
    fused_rnn: torch.nn.RNNBase
    x: torch.Tensor  # [T, B, I]
    dy: torch.Tensor  # [T, B, H]
    compiled_cell: Optional[Callable] = None  # torch.compile(cell_module), made on first use

    def parameters(self) -> list:
        mods = (self.torch_rnn, self.cell_module, self.fused_rnn)
        return [p for m in mods for p in m.parameters()]


def build_workload(cell: str, shape: Shape, device="cpu", dtype=torch.float32,
                   seed: int = 0) -> Workload:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # torch.nn's own initialisation of the weights
    torch_rnn = _RNN_CLASSES[cell](shape.I, shape.H).to(device, dtype)
    fused = _FUSED_CLASSES[cell](shape.I, shape.H).to(device, dtype)
    fused.load_state_dict(torch_rnn.state_dict())
    cell_module = _cell_with_weights_of(cell, torch_rnn)
    # Drawn on the CPU from our own generator: the same numbers on every device.
    x = torch.randn(shape.T, shape.B, shape.I, generator=gen).to(device, dtype)
    dy = torch.randn(shape.T, shape.B, shape.H, generator=gen).to(device, dtype)
    return Workload(cell, shape, torch_rnn, cell_module, fused, x.requires_grad_(), dy)


def _cell_with_weights_of(cell: str, rnn: torch.nn.RNNBase) -> torch.nn.RNNCellBase:
    """An nn.*Cell holding layer 0 of ``rnn``'s weights (same layout, other names)."""
    module = _CELL_CLASSES[cell](rnn.input_size, rnn.hidden_size)
    module = module.to(rnn.weight_ih_l0.device, rnn.weight_ih_l0.dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(module, name).copy_(getattr(rnn, name + "_l0"))
    return module


def run_cell_loop(cell_module: torch.nn.RNNCellBase, x: torch.Tensor) -> torch.Tensor:
    """The Python loop over time that users write with nn.LSTMCell/GRUCell: [T, B, H]."""
    state = None  # the cells start from zeros, as the RNN modules do
    outputs = []
    for x_t in x.unbind(0):
        state = cell_module(x_t, state)
        outputs.append(state[0] if isinstance(state, tuple) else state)
    return torch.stack(outputs)


def run_compiled_cell_loop(compiled_cell: Callable, cell_module: torch.nn.RNNCellBase,
                           x: torch.Tensor) -> torch.Tensor:
    """The same loop with the step compiled: [T, B, H]. Step 0 runs eagerly: it starts from no
    state, and compiling it too would be a second graph (a second compile) for 1% of the work."""
    steps = x.unbind(0)
    state = cell_module(steps[0])
    outputs = [state[0] if isinstance(state, tuple) else state]
    for x_t in steps[1:]:
        state = compiled_cell(x_t, state)
        outputs.append(state[0] if isinstance(state, tuple) else state)
    return torch.stack(outputs)


def compiled_cell_of(workload: Workload) -> Callable:
    """The workload's torch.compile'd cell, made once; each grad mode compiles on first call.

    Dynamo's caches are reset when it is made: they are kept per code object (every LSTMCell
    shares one forward), so the cells of earlier workloads would count against dynamo's
    recompile limit and make a row's compile time depend on the rows before it."""
    if workload.compiled_cell is None:
        torch._dynamo.reset()
        workload.compiled_cell = torch.compile(workload.cell_module)
    return workload.compiled_cell


def compiler_missing_reason(device: torch.device) -> Optional[str]:
    """Why torch.compile's default backend (inductor) cannot generate code here, or None:
    C++ on CPU needs a compiler on the PATH, CUDA needs Triton."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile on CUDA needs Triton (pip install triton)"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # InvalidCxxCompiler, or inductor failing to import at all
        return f"torch.compile on CPU needs a C++ compiler (g++ or clang++): {first_line(err)}"
    return None


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def forward_fn(workload: Workload, implementation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x [T, B, I] -> output [T, B, H]`` for one implementation."""
    if implementation == TORCH_NN:
        return lambda x: workload.torch_rnn(x)[0]
    if implementation == CELL_LOOP:
        return lambda x: run_cell_loop(workload.cell_module, x)
    if implementation == COMPILED_CELL_LOOP:
        compiled_cell = compiled_cell_of(workload)
        return lambda x: run_compiled_cell_loop(compiled_cell, workload.cell_module, x)
    backend = fused_backend_of(implementation)
    if backend is None:
        raise ValueError(f"unknown implementation {implementation!r}")

    recompute = recomputes(implementation)

    def fused_forward(x):
        with fused_rnn.use_backend(backend), fused_rnn.use_recompute(recompute):
            return workload.fused_rnn(x)[0]

    return fused_forward


def make_runner(workload: Workload, implementation: str, mode: str) -> Callable[[], None]:
    """A zero-argument callable that runs one timed iteration of the row."""
    forward = forward_fn(workload, implementation)
    if mode == "fwd":
        def run_forward():
            with torch.no_grad():
                forward(workload.x)
        return run_forward
    if mode != "fwd+bwd":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    params = workload.parameters()

    def run_forward_backward():
        forward(workload.x).backward(workload.dy)
        drop_grads([workload.x, *params])

    return run_forward_backward


def unsupported_reason(workload: Workload, implementation: str) -> Optional[str]:
    """Why a fused backend cannot run this workload (its BackendError), or why torch.compile
    cannot run here (no compiler), or None.

    Runs a fused backend's forward once: the backend's own check is the only one that knows.
    A compile that fails later, in the warm-up, is the runner's to report."""
    if implementation == COMPILED_CELL_LOOP:
        return compiler_missing_reason(workload.x.device)
    if fused_backend_of(implementation) is None:
        return None
    try:
        with torch.no_grad():
            forward_fn(workload, implementation)(workload.x)
    except fused_rnn.BackendError as err:
        return str(err)
    return None


def max_abs_diff_vs_torch_nn(workload: Workload, implementation: str, mode: str = "fwd") -> float:
    """Largest |output - torch.nn's output| on the benchmark input: a timed row must compute
    the same thing as the baseline, or its time means nothing. The forward runs in the row's
    grad mode, so a compiled row checks the graph it timed (and compiles no other)."""
    with torch.set_grad_enabled(mode == "fwd+bwd"):
        expected = forward_fn(workload, TORCH_NN)(workload.x)
        got = forward_fn(workload, implementation)(workload.x)
    return (got.detach().float() - expected.detach().float()).abs().max().item()
