"""Backends: what each one supports, why it refuses, and which one runs a call.

Every backend declares the devices, dtypes and sizes it handles and explains a refusal in
words (`not_supported_reasons`). Selection order for one call:

1. the innermost ``use_backend(name)`` context,
2. else ``set_backend(name)``,
3. else the ``FUSED_RNN_BACKEND`` environment variable (read once, at import),
4. else ``"auto"``: the highest-priority backend that is available and supports the call.

A forced backend that cannot run the call raises :class:`BackendError` with its reasons;
``auto`` that passes over a faster backend because it is missing (not built, no Triton)
warns once, then uses the next one. It never falls back silently to a wrong answer.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import sys
import os
import warnings
from typing import Callable, Iterator, Optional

import torch

AUTO = "auto"
OPS = ("recurrence", "attention", "variants")


class BackendError(RuntimeError):
    """No backend (or not the forced one) can run this call; the message says why."""


@dataclasses.dataclass(frozen=True)
class OpCall:
    """What a backend needs to know to accept or refuse one call of an op.

    ``sizes`` holds the op's named sizes, e.g. ``{"hidden_size": 256, "batch": 64}``.
    """

    op: str
    device: torch.device
    dtype: torch.dtype
    sizes: dict = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"{self.op} on {self.device.type} {str(self.dtype).replace('torch.', '')} ({sizes})"


@dataclasses.dataclass
class Backend:
    """One implementation of the ops.

    ``modules`` maps an op name to the module holding its launchers (``_fwd``/``_bwd``),
    imported on first use so that a backend costs nothing until it runs.
    ``tolerances`` maps a dtype to ``(rtol, atol)`` against an fp64 reference, read by the
    tests. ``availability`` returns ``None`` when the backend can run on this machine, or
    the reason it cannot (e.g. the extension was not built).
    """

    name: str
    priority: int
    modules: dict
    device_types: frozenset
    dtypes: frozenset
    tolerances: dict
    availability: Callable[[], Optional[str]] = lambda: None
    extra_reasons: Callable[[OpCall], list] = lambda call: []
    build_hint: str = ""

    def unavailable_reason(self) -> Optional[str]:
        return self.availability()

    def not_supported_reasons(self, call: OpCall) -> list:
        """Readable reasons why this backend cannot run ``call``; empty when it can."""
        reasons = []
        missing = self.unavailable_reason()
        if missing:
            reasons.append(missing)
        if call.op not in self.modules:
            reasons.append(f"has no {call.op} op")
        if call.device.type not in self.device_types:
            reasons.append(
                f"runs on {'/'.join(sorted(self.device_types))} tensors, got {call.device.type}"
            )
        if call.dtype not in self.dtypes:
            names = ", ".join(sorted(str(d).replace("torch.", "") for d in self.dtypes))
            reasons.append(f"supports dtypes {names}, got {str(call.dtype).replace('torch.', '')}")
        if not reasons:
            reasons.extend(self.extra_reasons(call))
        return reasons

    def ops(self, op: str):
        # sys.modules first: import_module costs a decoder's cell ~4 us per call.
        name = self.modules[op]
        return sys.modules.get(name) or importlib.import_module(name)


_REGISTRY: dict = {}
_global_choice: Optional[str] = None
_context_choice: contextvars.ContextVar = contextvars.ContextVar("fused_rnn_backend", default=None)
_warned: set = set()


# select()'s answers: (choice, op, device, dtype, sizes) -> Backend. A backend's
# availability is fixed once asked (the extension loads or not, Triton imports or not), so
# an answer holds until the registry changes; a decoder asks twice per step (~5 us each).
_selected: dict = {}
_SELECTED_MAX = 4096  # distinct calls (batch and length sizes) before it starts over


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    _selected.clear()
    return backend


def unregister_backend(name: str) -> None:
    """Remove a backend registered with :func:`register_backend`."""
    del _REGISTRY[name]
    _selected.clear()


def get_backend(name: str) -> Backend:
    _check_name(name, allow_auto=False)
    return _REGISTRY[name]


def backend_names() -> list:
    """Every registered backend, best first, available or not."""
    return [b.name for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority)]


def available_backends() -> list:
    """Names of the backends that can run on this machine, best first."""
    return [n for n in backend_names() if _REGISTRY[n].unavailable_reason() is None]


def backend_report() -> dict:
    """``{name: "available" | reason}`` for every registered backend."""
    return {n: _REGISTRY[n].unavailable_reason() or "available" for n in backend_names()}


def _check_name(name, allow_auto: bool = True) -> None:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    if name == AUTO and allow_auto:
        return
    if name not in _REGISTRY:
        known = ", ".join([AUTO] * allow_auto + backend_names())
        raise ValueError(f"unknown fused_rnn backend {name!r}; expected one of: {known}")


def set_backend(name: Optional[str]) -> None:
    """Force ``name`` for every later call (``"auto"`` or ``None`` restores the default)."""
    global _global_choice
    if name is not None:
        _check_name(name)
    _global_choice = None if name in (None, AUTO) else name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the calls inside the ``with`` block on backend ``name`` (or ``"auto"``)."""
    _check_name(name)
    token = _context_choice.set(name)
    try:
        yield
    finally:
        _context_choice.reset(token)


def current_backend() -> str:
    """The name that selection starts from: a forced backend or ``"auto"``."""
    return _context_choice.get() or _global_choice or _ENV_CHOICE or AUTO


def select(call: OpCall) -> Backend:
    """The backend that runs ``call``, or :class:`BackendError` explaining why none can."""
    choice = current_backend()
    key = (choice, call.op, call.device, call.dtype, tuple(call.sizes.items()))
    backend = _selected.get(key)
    if backend is None:
        backend = _select(choice, call)
        if len(_selected) >= _SELECTED_MAX:
            _selected.clear()
        _selected[key] = backend
    return backend


def select_by_sizes(op: str, device: torch.device, dtype: torch.dtype, sizes: tuple) -> Backend:
    """:func:`select` of ``OpCall(op, device, dtype, dict(sizes))``, ``sizes`` as the
    ``(name, value)`` pairs in order: a call already seen costs one lookup, no OpCall (a
    decoder's cell selects per step)."""
    backend = _selected.get((current_backend(), op, device, dtype, sizes))
    return backend if backend is not None else select(OpCall(op, device, dtype, dict(sizes)))


def _select(choice: str, call: OpCall) -> Backend:
    if choice != AUTO:
        _check_name(choice, allow_auto=False)
        backend = _REGISTRY[choice]
        reasons = backend.not_supported_reasons(call)
        if reasons:
            fix = f". {backend.build_hint}" if backend.unavailable_reason() and backend.build_hint else ""
            raise BackendError(
                f"fused_rnn backend {choice!r} was forced but cannot run {call.describe()}: "
                + "; ".join(reasons) + fix
            )
        return backend
    refusals = []
    for name in backend_names():
        backend = _REGISTRY[name]
        reasons = backend.not_supported_reasons(call)
        if not reasons:
            return backend
        refusals.append(f"{name}: " + "; ".join(reasons))
        _warn_if_skipped_for_missing(backend, call)
    raise BackendError(f"no fused_rnn backend can run {call.describe()}:\n  " + "\n  ".join(refusals))


@torch.compiler.assume_constant_result
def select_name(op: str, device_type: str, dtype: torch.dtype, sizes: tuple) -> str:
    """:func:`select` for code traced by torch.compile: the name of the backend, computed
    once while tracing (``sizes`` as ``(name, value)`` pairs). The compiled graph keeps
    that backend: a later ``set_backend`` takes effect in a new compilation."""
    return select(OpCall(op, torch.device(device_type), dtype, dict(sizes))).name


def _warn_if_skipped_for_missing(backend: Backend, call: OpCall) -> None:
    """Warn once when ``backend`` would have run ``call`` but is missing on this machine."""
    missing = backend.unavailable_reason()
    if not missing or backend.name in _warned:
        return
    if call.device.type not in backend.device_types or call.dtype not in backend.dtypes:
        return
    _warned.add(backend.name)
    hint = f" {backend.build_hint}" if backend.build_hint else ""
    warnings.warn(
        f"fused_rnn: backend {backend.name!r} is not available ({missing}); "
        f"using a slower one instead.{hint}",
        RuntimeWarning,
        stacklevel=4,
    )


_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
# (rtol, atol) against an fp64 reference; half precision is bf16/fp16 storage, fp32 math.
_TOLERANCES = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (5e-3, 5e-3),
}

register_backend(
    Backend(
        name="reference",
        priority=0,
        modules={
            "recurrence": "fused_rnn.ops.recurrence.reference",
            "attention": "fused_rnn.ops.attention.reference",
            "variants": "fused_rnn.ops.variants.reference",
        },
        device_types=frozenset({"cpu", "cuda"}),
        dtypes=_FLOATS,
        tolerances=_TOLERANCES,
    )
)


def _cpu_availability() -> Optional[str]:
    from ._native import cpu_available  # imports fused_rnn._C once, on first use

    return cpu_available()


def _cpu_refusals(call: OpCall) -> list:
    """Half dtypes run as fp32 math for the plain recurrence only (ops/recurrence/native.py)."""
    if call.dtype in (torch.float16, torch.bfloat16) and call.op != "recurrence":
        return [f"its {call.op} ops take float32 and float64 (half dtypes: the recurrence only)"]
    return []


register_backend(
    Backend(
        name="cpu",
        priority=10,
        modules={"recurrence": "fused_rnn.ops.recurrence.native",
                 "attention": "fused_rnn.ops.attention.native",
                 "variants": "fused_rnn.ops.variants.native"},
        device_types=frozenset({"cpu"}),
        dtypes=_FLOATS,
        tolerances=_TOLERANCES,
        availability=_cpu_availability,
        extra_reasons=_cpu_refusals,
        build_hint="Build the extension with `pip install --no-build-isolation -e .` "
                   "in the fused_rnn checkout.",
    )
)

def _cuda_availability() -> Optional[str]:
    from ._native import cuda_available  # imports fused_rnn._C once, on first use

    return cuda_available()


def _cuda_refusals(call: OpCall) -> list:
    """Attention rows hold their keys' scores on chip (ops/attention/rowwise.py)."""
    if call.op != "attention" or "key_steps" not in call.sizes:
        return []
    from .ops.attention.rowwise_limits import max_keys

    most = max_keys(call.dtype)
    if call.sizes["key_steps"] <= most:
        return []
    return [f"its attention takes at most {most} keys per row in "
            f"{str(call.dtype).replace('torch.', '')}, got {call.sizes['key_steps']}"]


# The C++/CUDA fallback for GPUs without Triton (csrc/include/fused_rnn/): the recurrence
# as a cuBLAS GEMM and one fused pointwise kernel per step, or one whole-sequence launch
# where W_hh fits in a block's shared memory; the variant recurrences as a cuBLAS GEMM and
# one fused row kernel per step (the layer norms reduce within a block); attention as one
# block per query row. Below triton, which runs whole sequences in one launch; auto reaches it when
# Triton is missing (with one warning).
register_backend(
    Backend(
        name="cuda",
        priority=15,
        modules={"recurrence": "fused_rnn.ops.recurrence.stepwise",
                 "attention": "fused_rnn.ops.attention.rowwise",
                 "variants": "fused_rnn.ops.variants.stepwise"},
        device_types=frozenset({"cuda"}),
        dtypes=_FLOATS,
        tolerances=_TOLERANCES,
        availability=_cuda_availability,
        extra_reasons=_cuda_refusals,
        build_hint="Build the extension with a CUDA build of torch and nvcc on PATH: "
                   "`pip install --no-build-isolation -e .` in the fused_rnn checkout.",
    )
)

# TRITON_INTERPRET=1 (read by Triton at import) runs the kernels on CPU tensors in NumPy.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_triton_reason: dict = {}  # asked on every call: a failed import must not be retried


def _triton_availability() -> Optional[str]:
    if "reason" not in _triton_reason:
        try:
            importlib.import_module("triton")
            reason = None
        except ImportError as e:
            reason = f"triton is not installed (ImportError: {e})"
        if reason is None and not _TRITON_INTERPRET and not torch.cuda.is_available():
            reason = "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU, slowly)"
        _triton_reason["reason"] = reason
    return _triton_reason["reason"]


def _triton_refusals(call: OpCall) -> list:
    """What the interpreter (the only way triton meets CPU tensors) computes wrongly."""
    if call.device.type != "cpu":
        return []
    if call.dtype == torch.bfloat16:
        # numpy has no bf16: triton 3.9's interpreter multiplies tl.dot's bf16 operands
        # as raw bits (errors ~1e10). The GPU kernels are not affected.
        return ["the Triton interpreter computes tl.dot on bf16 wrongly (bf16 runs on CUDA)"]
    if call.op == "attention" and call.dtype == torch.float16:
        return ["the attention kernels take half dtypes on CUDA only (not the interpreter)"]
    return []


register_backend(
    Backend(
        name="triton",
        priority=20,
        modules={"recurrence": "fused_rnn.ops.recurrence.triton",
                 "variants": "fused_rnn.ops.variants.triton",
                 "attention": "fused_rnn.ops.attention.triton"},
        device_types=frozenset({"cuda", "cpu"} if _TRITON_INTERPRET else {"cuda"}),
        dtypes=_FLOATS,
        tolerances=_TOLERANCES,
        availability=_triton_availability,
        extra_reasons=_triton_refusals,
        build_hint="Install Triton with `pip install triton` (CUDA GPUs).",
    )
)

_ENV_CHOICE = os.environ.get("FUSED_RNN_BACKEND", "").strip() or None
if _ENV_CHOICE is not None and _ENV_CHOICE != AUTO and _ENV_CHOICE not in _REGISTRY:
    # Not an import error: the package must import; the first call raises with the names.
    warnings.warn(
        f"FUSED_RNN_BACKEND={_ENV_CHOICE!r} names no fused_rnn backend "
        f"(known: {', '.join(backend_names())}); calls will raise until it is fixed",
        RuntimeWarning,
    )
