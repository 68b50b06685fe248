"""The torch-free CUDA kernels of ``csrc/include/fused_rnn/*.cuh``, checked without a GPU.

1. Compile: the ``tests/cuda_kernels*.cu`` translation units include every header and
   instantiate every launcher for float, __half and __nv_bfloat16; one nvcc run per unit
   builds it for sm_80 and sm_90 with the
   extension's flags (torch's no-half-conversion macros included) and ``-Xptxas -v``. Any
   error or warning fails, and so does a kernel that spills registers or uses a stack frame.
   Skipped, saying why, only where nvcc is absent and ``FUSED_RNN_REQUIRE_NVCC`` is not set
   (CI sets it).
2. Math: ``tests/cuda_kernels_host.cpp`` drives the same per-element step functions the
   kernels call, over every (row, unit), through the time loop the binding is to run; its
   outputs and gradients are compared with ``fused_rnn.ops.recurrence.reference`` in
   float64: every cell, both directions, with and without lengths (a zero length
   included), bias and projection. Built with a plain C++ compiler for float64 and float32
   (storage = accumulation), and with nvcc (host code, torch's no-half-conversion macros) for
   __half and __nv_bfloat16 storage with float accumulation, as the kernels run.

Run this file as a script to print the register table.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import pytest
import torch

from fused_rnn.ops.recurrence import reference
from fused_rnn.ops.recurrence.cells import GATES, GRU, LSTM, RNN_RELU, RNN_TANH, LayerWeights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "csrc", "include")
HEADERS = sorted(glob.glob(os.path.join(INCLUDE, "fused_rnn", "*.cuh")))
# Every tests/cuda_kernels*.cu translation unit (one per kernel family's owner).
TUS = sorted(glob.glob(os.path.join(ROOT, "tests", "cuda_kernels*.cu")))
HOST = os.path.join(ROOT, "tests", "cuda_kernels_host.cpp")
ARCHS = ("sm_80", "sm_90")
DTYPES = {"f": "float", "d": "double", "6__half": "__half", "13__nv_bfloat16": "__nv_bfloat16"}

# The extension's nvcc flags (setup.py) plus what torch's CUDAExtension adds that matters here.
NO_HALF_CONVERSIONS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                       "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
NVCC_FLAGS = [
    "-std=c++17", "-O3", "--use_fast_math", "-lineinfo", *NO_HALF_CONVERSIONS,
    "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
    "-Xptxas", "-v", "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra",
]


def find_nvcc():
    """nvcc on PATH, else the newest /usr/local/cuda*/bin/nvcc, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    for cand in sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True):
        if os.access(cand, os.X_OK):
            return cand
    return None


def _need_nvcc():
    nvcc = find_nvcc()
    if nvcc is None:
        if os.environ.get("FUSED_RNN_REQUIRE_NVCC", "0") == "1":
            pytest.fail("FUSED_RNN_REQUIRE_NVCC=1 but nvcc is neither on PATH nor in /usr/local/cuda*/bin")
        pytest.skip("nvcc not found (PATH, /usr/local/cuda*/bin): the CUDA kernels are not compiled here; "
                    "set FUSED_RNN_REQUIRE_NVCC=1 to make this a failure")
    return nvcc


def kernel_name(mangled):
    """'recurrence_fwd_step_kernel<LSTM, __half>' from the mangled entry name."""
    m = re.match(r"_ZN9fused_rnn4cuda\d+(\w+?_kernel)I(.*)EEvN", mangled)
    if not m:
        return mangled
    name, args = m.groups()
    mode = re.match(r"Li(\d)E(.*)", args)
    parts = []
    if mode:
        parts.append(("LSTM", "GRU", "RNN_TANH", "RNN_RELU")[int(mode.group(1))])
        args = mode.group(2)
    for code, dtype in sorted(DTYPES.items(), key=lambda kv: -len(kv[0])):
        if args.startswith(code):
            parts.append(dtype)
            break
    return f"{name}<{', '.join(parts)}>"


def parse_ptxas(text):
    """{(kernel, arch): {'regs', 'stack', 'spill_stores', 'spill_loads'}} from -Xptxas -v."""
    out, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            cur = (kernel_name(m.group(1)), m.group(2))
            out[cur] = {}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[cur].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                            spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[cur]["regs"] = int(m.group(1))
    return out


_COMPILED = {}


def compile_kernels(nvcc):
    """One nvcc run per translation unit for both archs; (returncode, output, table, commands)
    over all of them. Cached per process."""
    if "result" not in _COMPILED:
        rc, text, cmds = 0, "", []
        with tempfile.TemporaryDirectory() as tmp:
            for tu in TUS:
                cmd = [nvcc, *NVCC_FLAGS, "-I", INCLUDE, "-c", tu, "-o", os.path.join(tmp, "kernels.o")]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                rc, text = rc or proc.returncode, text + proc.stdout + proc.stderr
                cmds.append(" ".join(cmd))
        _COMPILED["result"] = (rc, text, parse_ptxas(text), "\n".join(cmds))
    return _COMPILED["result"]


def format_table(table):
    rows = [f"{'kernel':<52} {'arch':<6} {'regs':>4} {'stack':>5} {'spills st/ld':>12}"]
    for (name, arch), r in sorted(table.items()):
        rows.append(f"{name:<52} {arch:<6} {r.get('regs', '?'):>4} {r.get('stack', '?'):>5} "
                    f"{r.get('spill_stores', '?'):>6}/{r.get('spill_loads', '?'):<5}")
    return "\n".join(rows)


def test_every_header_is_compiled():
    src = "".join(open(tu).read() for tu in TUS)
    assert HEADERS, "no csrc/include/fused_rnn/*.cuh"
    for h in HEADERS:
        assert f'#include "fused_rnn/{os.path.basename(h)}"' in src, f"no tests/cuda_kernels*.cu includes {h}"


def test_kernels_compile_for_sm80_sm90_without_warnings_or_spills():
    nvcc = _need_nvcc()
    rc, text, table, cmd = compile_kernels(nvcc)
    assert rc == 0, f"nvcc failed:\n{cmd}\n{text}"
    warnings = [line for line in text.splitlines() if re.search(r"warning", line, re.I)]
    assert not warnings, "nvcc warnings:\n" + "\n".join(warnings)
    print("\n" + format_table(table))
    # Every __global__ kernel of the headers, for every dtype and arch.
    kernels = set()
    for h in HEADERS:
        kernels |= set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", open(h).read()))
    assert kernels
    for kernel in kernels:
        for arch in ARCHS:
            for dtype in DTYPES.values():
                assert any(n.startswith(kernel + "<") and n.endswith(dtype + ">") and a == arch
                           for n, a in table), f"{kernel} for {dtype} on {arch} was not compiled"
    bad = {k: r for k, r in table.items()
           if r.get("spill_stores") or r.get("spill_loads") or r.get("stack") or "regs" not in r}
    assert not bad, "register spills or stack frames:\n" + format_table(bad)


# ---------------------------------------------------------------- host check of the math

MODES = {LSTM: 0, GRU: 1, RNN_TANH: 2, RNN_RELU: 3}


# dtype -> (harness code, built by nvcc, tolerance). float64/float32: the same equations to
# rounding; float32 against the float64 reference: a few float32 ulps of the values (all O(1)
# here; max error seen 6e-7). Half storage (gx, gh, states, acts, da rounded at every step, as
# the kernels and cuBLAS do) against float64 on the same rounded inputs: max error <= 8 eps of
# the tensor's scale (seen: 0.8 eps float16, 2.3 eps bfloat16; a wrong conversion is O(1)).
HOST_DTYPES = {
    torch.float64: (1, False, dict(rtol=1e-10, atol=1e-12)),
    torch.float32: (0, False, dict(rtol=5e-6, atol=5e-6)),
    torch.float16: (2, True, None),
    torch.bfloat16: (3, True, None),
}


@pytest.fixture(scope="module")
def host_harness(tmp_path_factory):
    """Builds the harness on first use: {'cxx': path, 'nvcc': path}."""
    built, tmp = {}, tmp_path_factory.mktemp("cuda_host")

    def get(with_nvcc):
        key = "nvcc" if with_nvcc else "cxx"
        if key not in built:
            if with_nvcc:
                cmd = [_need_nvcc(), "-x", "cu", "-std=c++17", "-O1", *NO_HALF_CONVERSIONS,
                       "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra"]
            else:
                cxx = (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
                       or shutil.which("clang++"))
                if cxx is None:
                    pytest.skip("no C++ compiler (CXX, c++, g++, clang++) to build the host check")
                cmd = [cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror"]
            exe = str(tmp / f"cuda_kernels_host_{key}")
            proc = subprocess.run([*cmd, "-I", INCLUDE, HOST, "-o", exe], capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, " ".join(cmd) + "\n" + proc.stdout + proc.stderr
            built[key] = exe
        return built[key]

    return get


def _case(mode, reverse, lengths, bias, proj, seed):
    g = torch.Generator().manual_seed(seed)
    T, B, I, H = 5, 4, 3, 6
    P = 4 if proj else H
    G = GATES[mode]

    def r(*shape, scale=1.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale

    w = LayerWeights(r(G * H, I, scale=0.6), r(G * H, P, scale=0.6),
                     r(G * H, scale=0.5) if bias else None, r(G * H, scale=0.5) if bias else None,
                     r(P, H, scale=0.6) if proj else None)
    lens = torch.tensor([5, 2, 0, 3], dtype=torch.int64) if lengths else None
    return dict(mode=mode, reverse=reverse, x=r(T, B, I, scale=1.5), h0=r(B, P),
                c0=r(B, H) if mode == LSTM else None, w=w, lengths=lens, dy=r(T, B, P),
                dh_n=r(B, P), dc_n=r(B, H) if mode == LSTM else None)


def _round(c, dtype):
    """The case with every float tensor rounded to dtype (kept in float64)."""
    r = {k: v.to(dtype).double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
         for k, v in c.items()}
    r["w"] = LayerWeights(*[None if v is None else v.to(dtype).double() for v in c["w"]])
    return r


def _run_harness(exe, c, dtype_code):
    T, B, I = c["x"].shape
    w = c["w"]
    H = w.w_ih.shape[0] // GATES[c["mode"]]
    P = c["h0"].shape[1]
    header = [MODES[c["mode"]], dtype_code, T, B, I, H, P, int(c["reverse"]),
              int(c["lengths"] is not None), int(w.b_ih is not None)]
    blob = struct.pack("<10q", *header)
    if c["lengths"] is not None:
        blob += c["lengths"].numpy().astype("<i8").tobytes()
    arrays = [c["x"], c["h0"], c["c0"], w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, c["dy"], c["dh_n"], c["dc_n"]]
    for a in arrays:
        if a is not None:
            blob += a.contiguous().numpy().astype("<f8").tobytes()
    proc = subprocess.run([exe], input=blob, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    out = torch.frombuffer(bytearray(proc.stdout), dtype=torch.float64)
    lstm = c["mode"] == LSTM
    shapes = [("y", (T, B, P)), ("h_n", (B, P)), ("c_n", (B, H) if lstm else None),
              ("dx", (T, B, I)), ("dh0", (B, P)), ("dc0", (B, H) if lstm else None),
              ("dw_ih", tuple(w.w_ih.shape)), ("dw_hh", tuple(w.w_hh.shape)),
              ("db_ih", tuple(w.b_ih.shape) if w.b_ih is not None else None),
              ("db_hh", tuple(w.b_hh.shape) if w.b_hh is not None else None),
              ("dw_hr", tuple(w.w_hr.shape) if w.w_hr is not None else None)]
    result, k = {}, 0
    for name, shape in shapes:
        if shape is None:
            continue
        n = int(torch.tensor(shape).prod())
        result[name] = out[k:k + n].reshape(shape)
        k += n
    assert k == out.numel(), f"harness wrote {out.numel()} values, expected {k}"
    return result


def _reference(c):
    args = (c["mode"], c["reverse"], c["x"], c["h0"], c["c0"], c["w"], c["lengths"])
    y, h, cn, saved = reference._fwd(*args)
    dx, dh0, dc0, grads = reference._bwd(*args, saved, c["dy"], c["dh_n"], c["dc_n"])
    ref = dict(y=y, h_n=h, c_n=cn, dx=dx, dh0=dh0, dc0=dc0, dw_ih=grads.w_ih, dw_hh=grads.w_hh,
               db_ih=grads.b_ih, db_hh=grads.b_hh, dw_hr=grads.w_hr)
    return {k: v for k, v in ref.items() if v is not None}


CASES = [(mode, rev, lens, bias, False) for mode in MODES for rev in (False, True)
         for lens in (False, True) for bias in (True, False) if bias or (rev and lens)]
CASES += [(LSTM, rev, lens, True, True) for rev in (False, True) for lens in (False, True)]


@pytest.mark.parametrize("dtype", list(HOST_DTYPES), ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("mode,reverse,lengths,bias,proj", CASES,
                         ids=[f"{m}-{'rev' if r else 'fwd'}-{'len' if l else 'full'}"
                              f"{'' if b else '-nobias'}{'-proj' if p else ''}" for m, r, l, b, p in CASES])
def test_host_step_math_matches_reference(host_harness, mode, reverse, lengths, bias, proj, dtype):
    code, with_nvcc, tol = HOST_DTYPES[dtype]
    seed = 1000 + len(CASES) * code + CASES.index((mode, reverse, lengths, bias, proj))
    c = _case(mode, reverse, lengths, bias, proj, seed)
    if dtype != torch.float64:
        c = _round(c, dtype)  # both sides see the same inputs
    got = _run_harness(host_harness(with_nvcc), c, code)
    ref = _reference(c)
    assert set(got) == set(ref)
    for name in ref:
        if tol is not None:
            torch.testing.assert_close(got[name], ref[name], **tol, msg=lambda m, n=name: f"{n}: {m}")
        else:
            err, scale = (got[name] - ref[name]).abs().max().item(), ref[name].abs().max().item()
            bound = 8 * torch.finfo(dtype).eps * max(scale, 0.1)
            assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (scale {scale:.3g})"
    if lengths:  # outputs past a row's length are exactly zero
        L = c["lengths"]
        for b in range(L.numel()):
            assert torch.all(got["y"][L[b]:, b] == 0)


if __name__ == "__main__":
    nvcc = find_nvcc()
    if nvcc is None:
        sys.exit("nvcc not found")
    rc, text, table, _ = compile_kernels(nvcc)
    print(text if rc else format_table(table))
    sys.exit(rc)
