"""Backend selection: forcing, refusing with reasons, auto fallback with one warning,
and the FUSED_RNN_BACKEND override."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import fused_rnn
from fused_rnn import backends
from fused_rnn.testing import child_env

CALL = backends.OpCall("recurrence", torch.device("cpu"), torch.float32, {"hidden_size": 8})


@pytest.fixture
def fake_backends():
    """Two registered fakes, removed afterwards: one missing, one fp64-only."""
    missing = backends.Backend(
        name="fake_missing", priority=100, modules={"recurrence": "fused_rnn.ops.recurrence.reference"},
        device_types=frozenset({"cpu"}), dtypes=frozenset({torch.float32}), tolerances={},
        availability=lambda: "fused_rnn._C was not built", build_hint="Rebuild with pip install -e .")
    fp64 = backends.Backend(
        name="fake_fp64", priority=50, modules={"recurrence": "fused_rnn.ops.recurrence.reference"},
        device_types=frozenset({"cpu"}), dtypes=frozenset({torch.float64}), tolerances={},
        extra_reasons=lambda call: ["hidden_size must be even"] if call.sizes.get("hidden_size", 0) % 2 else [])
    for b in (missing, fp64):
        backends.register_backend(b)
    yield missing, fp64
    for b in (missing, fp64):
        backends.unregister_backend(b.name)
        backends._warned.discard(b.name)


def _best_real_backend():
    """The backend auto picks for CALL without the fakes (cpu when the extension is built)."""
    return [n for n in fused_rnn.available_backends() if not n.startswith("fake_")][0]


def test_reference_is_always_available():
    assert "reference" in fused_rnn.available_backends()
    assert fused_rnn.backend_report()["reference"] == "available"


def test_unknown_name_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match=r"unknown fused_rnn backend 'nope'; expected one of: auto, .*reference"):
        fused_rnn.set_backend("nope")
    with pytest.raises(ValueError, match="unknown fused_rnn backend"):
        with fused_rnn.use_backend("nope"):
            pass


def test_use_backend_nests_and_restores():
    assert fused_rnn.current_backend() == "auto"
    fused_rnn.set_backend("reference")
    with fused_rnn.use_backend("auto"):
        assert fused_rnn.current_backend() == "auto"
        with fused_rnn.use_backend("reference"):
            assert fused_rnn.current_backend() == "reference"
        assert fused_rnn.current_backend() == "auto"
    assert fused_rnn.current_backend() == "reference"
    fused_rnn.set_backend(None)
    assert fused_rnn.current_backend() == "auto"


def test_forced_backend_that_cannot_run_lists_why(fake_backends):
    with fused_rnn.use_backend("fake_fp64"):
        with pytest.raises(backends.BackendError, match=r"'fake_fp64' was forced but cannot run recurrence "
                                                        r"on cpu float32.*supports dtypes float64, got float32"):
            backends.select(CALL)
    with fused_rnn.use_backend("fake_missing"):
        with pytest.raises(backends.BackendError, match="fused_rnn._C was not built"):
            backends.select(CALL)


def test_extra_reasons_are_reported(fake_backends):
    call = backends.OpCall("recurrence", torch.device("cpu"), torch.float64, {"hidden_size": 7})
    assert backends.get_backend("fake_fp64").not_supported_reasons(call) == ["hidden_size must be even"]


def test_auto_skips_a_missing_backend_with_one_warning(fake_backends):
    with pytest.warns(RuntimeWarning, match=r"backend 'fake_missing' is not available \(fused_rnn._C was "
                                            r"not built\).*Rebuild with pip install -e ."):
        assert backends.select(CALL).name == _best_real_backend()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select(CALL).name == _best_real_backend()  # no second warning


def test_auto_takes_the_best_backend_that_supports_the_call(fake_backends):
    call = backends.OpCall("recurrence", torch.device("cpu"), torch.float64, {"hidden_size": 8})
    assert backends.select(call).name == "fake_fp64"
    assert fused_rnn.available_backends()[:2] == ["fake_fp64", _best_real_backend()]
    assert "fake_missing" not in fused_rnn.available_backends()


def test_modules_run_on_the_forced_backend(fake_backends):
    m = fused_rnn.GRU(3, 4).double()
    with fused_rnn.use_backend("fake_fp64"):
        m(torch.randn(2, 1, 3, dtype=torch.float64))
        with pytest.raises(backends.BackendError, match="fake_fp64"):
            m.float()(torch.randn(2, 1, 3))


def _python(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


def test_env_override_is_honoured():
    r = _python("import fused_rnn; print(fused_rnn.current_backend())", FUSED_RNN_BACKEND="reference")
    assert r.returncode == 0 and r.stdout.strip() == "reference", r.stderr


def test_bad_env_override_still_imports_then_raises_on_use():
    code = ("import torch, fused_rnn\n"
            "try:\n    fused_rnn.GRU(2, 3)(torch.randn(2, 1, 2))\n"
            "except ValueError as e:\n    print('raised:', e)\n")
    r = _python(code, FUSED_RNN_BACKEND="bogus")
    assert r.returncode == 0, r.stderr
    assert "FUSED_RNN_BACKEND='bogus' names no fused_rnn backend" in r.stderr
    assert "raised: unknown fused_rnn backend 'bogus'" in r.stdout


def test_without_triton_import_works_auto_falls_back_with_one_warning_and_forced_says_how():
    """Simulates a machine without Triton where it would have run (TRITON_INTERPRET=1 makes
    it the first choice for CPU tensors), in a fresh interpreter."""
    code = """
import sys, warnings
sys.modules["triton"] = None  # import triton now raises ImportError
import torch, fused_rnn
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    m = fused_rnn.GRU(3, 4)
    for _ in range(2):
        out, _ = m(torch.randn(5, 2, 3))
msgs = [str(w.message) for w in caught if "triton" in str(w.message)]
try:
    with fused_rnn.use_backend("triton"):
        m(torch.randn(5, 2, 3))
    forced = "no error"
except fused_rnn.BackendError as e:
    forced = str(e)
print(len(msgs), "|", msgs[0] if msgs else "", "|", forced.replace(chr(10), " "))
"""
    env = dict(child_env(), TRITON_INTERPRET="1", FUSED_RNN_BACKEND="auto")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    count, warning, forced = (part.strip() for part in r.stdout.strip().split("|"))
    assert count == "1", r.stdout
    assert "'triton' is not available" in warning and "pip install triton" in warning
    assert "'triton' was forced" in forced and "pip install triton" in forced
