import contextlib
import os

import pytest
import torch

if not torch.cuda.is_available():  # before anything imports triton: run it interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fused_rnn  # noqa: E402
from fused_rnn.testing import testable_backends  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_isolate():
    """Fresh but reproducible random inputs per test, and no backend choice leaking out."""
    torch.manual_seed(1234)
    yield
    fused_rnn.set_backend(None)


@pytest.fixture
def cuda_host():
    """The cuda backend's ops on CPU tensors, as a backend of its own (the registry's
    ``cuda`` takes CUDA tensors only): the kernels' per-element functions run on host
    threads, so their loops are tested without a GPU (tests/test_stepwise_recurrence.py,
    tests/test_rowwise_attention.py)."""
    from fused_rnn import backends

    cuda = backends.get_backend("cuda")
    backends.register_backend(backends.Backend(
        name="cuda_host", priority=-1, modules=dict(cuda.modules),
        device_types=frozenset({"cpu"}), dtypes=frozenset({torch.float32, torch.float64}),
        tolerances=backends.get_backend("cpu").tolerances))
    yield "cuda_host"
    backends.unregister_backend("cuda_host")


if torch.cuda.is_available():  # fp32 parity with torch.nn: cuDNN's RNNs would use TF32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _device_of(name: str) -> str:
    types = fused_rnn.backends.get_backend(name).device_types
    return "cpu" if "cpu" in types else sorted(types)[0]


@pytest.fixture(params=testable_backends())
def backend(request):
    """Each backend available on this machine, forced for the test's duration, with the
    default device one it runs on: the CPU where it can, else (triton and cuda on a GPU
    machine) CUDA, so that every tensor and module the test makes without naming a device
    is on the GPU."""
    device = _device_of(request.param)
    # torch.device(...) as a context is a TorchFunctionMode: kept off the CPU runs.
    default_device = contextlib.nullcontext() if device == "cpu" else torch.device(device)
    with fused_rnn.use_backend(request.param), default_device:
        yield request.param


# The triton backend on CPU runs in Triton's interpreter (~0.1 s per layer call), so CI
# cannot afford the whole grid on it. What is cut for triton there, and why:
TRITON_INTERPRETER_SKIPS = {
    # ~1000 interpreted calls per case (minutes): the fast-mode gradcheck and the exact fp64
    # backward-vs-autograd check of every case run on triton instead
    # (tests/test_triton_backend.py, tests/test_attention_triton.py).
    "test_gradcheck_float64": lambda p: "gradcheck: minutes per case interpreted; "
                                        "test_triton_backend.py / test_attention_triton.py "
                                        "check every case's backward instead",
    # The kernels see the same time-major tensors whatever batch_first says (the module
    # transposes outside them), and fp32 runs the same code as fp64 in the interpreter:
    # the fp64, time-major quarter of the grid covers every kernel path.
    "test_module_matches_torch": lambda p: None if (p.get("dt") == "fp64" and not p.get("bf"))
    else "interpreter budget: fp32 and batch_first cases repeat the fp64 time-major ones",
}


def pytest_collection_modifyitems(items):
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return
    for item in items:
        params = getattr(item, "callspec", None)
        rule = TRITON_INTERPRETER_SKIPS.get(item.originalname)
        if rule is None or params is None or params.params.get("backend") != "triton":
            continue
        reason = rule(params.params)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"triton interpreter: {reason}"))
