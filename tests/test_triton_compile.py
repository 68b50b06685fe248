"""Every Triton kernel of the package compiles for sm_80 and sm_90 in the configurations the
launcher picks (H in 128..1024, fp32 and bf16), with no register spills. No GPU needed:
``triton.compile`` builds the cubin, ``cuobjdump -res-usage`` (shipped with Triton) reads
registers, stack, local memory (spills) and static shared memory from it. Run in a
subprocess because the tests' process has ``TRITON_INTERPRET=1``, which turns
``@triton.jit`` into the interpreter. Run this file as a script to print the table."""

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch
from fused_rnn.testing import child_env

triton = pytest.importorskip("triton", reason="triton is not installed: no kernels to compile")

B = 64  # the fastrnns batch; the tiles do not depend on B beyond 32 rows
HIDDEN = (128, 256, 512, 1024)
ARCHS = (80, 90)

# Pointer arguments by what they hold: x's dtype, the fp32 accumulators/cell state, lengths.
ACC_ARGS = {"dh_ptr", "dyp_ptr", "dc_ptr"}
STATE_ARGS = {"cs_ptr"}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def launcher_configs():
    """(kernel, H, P, dtype, constexprs, launch options) for every kernel the launcher would
    launch at B = 64, H in HIDDEN: every cell in fp32 (dots on the FMA units) and bf16
    (tensor cores), LSTM with and without projection. Configurations that differ only in
    the runtime sizes give the same binary, so each is compiled once, at the first H that
    uses it."""
    from fused_rnn.ops.recurrence import triton as launcher
    from fused_rnn.ops.recurrence import triton_kernels as K

    out, seen = [], set()
    for H in HIDDEN:
        for mode in (K.LSTM_MODE, K.GRU_MODE, K.TANH_MODE):
            for dtype in ("fp32", "bf16"):
                for proj in ((0, H // 2) if mode == K.LSTM_MODE else (0,)):
                    P = proj or H
                    cfg = launcher.kernel_config(B, H, P, TORCH_DTYPES[dtype])
                    const = dict(MODE=mode, HAS_LENGTHS=True, REVERSE=True, PROJ=bool(proj),
                                 ACC="fp32", PRECISION="ieee")
                    blocks = dict(BLOCK_B=cfg.block_b, BLOCK_K=cfg.block_k)
                    fwd, bwd = dict(const, **blocks), dict(const, **blocks)
                    fwd["BLOCK_H"], bwd["BLOCK_P"] = cfg.block_h, cfg.block_h
                    name = "seq" if cfg.path == "seq" else "step"
                    launch = launcher._launch(cfg)
                    out.append((f"recurrence_fwd_{name}_kernel", H, P, dtype,
                                dict(fwd, SAVE=True), launch))
                    out.append((f"recurrence_bwd_{name}_kernel", H, P, dtype, bwd, launch))
                    if proj and cfg.path == "step":
                        pc = dict(HAS_LENGTHS=True, REVERSE=True, ACC="fp32", PRECISION="ieee",
                                  **blocks)
                        out.append(("projection_fwd_step_kernel", H, P, dtype,
                                    dict(pc, SAVE=True, BLOCK_P=cfg.block_h), launch))
                        out.append(("projection_bwd_step_kernel", H, P, dtype,
                                    dict(pc, BLOCK_H=cfg.block_h), launch))
    unique = []
    for c in out:
        key = (c[0], c[3], tuple(sorted(c[4].items())))
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _compile(name, H, P, dtype, constexprs, launch, arch):
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fused_rnn.ops.recurrence import triton_kernels as K

    fn = getattr(K, name)
    ints = {"s": 0, "B": B, "H": H, "P": P, "T": 100}
    consts = {k: (tl.float32 if v == "fp32" else v) for k, v in constexprs.items()}
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in consts:
            signature[arg] = "constexpr"
        elif arg in ints:
            signature[arg] = "i32"
            if ints[arg] % 16 == 0 and arg not in ("s", "T"):  # do_not_specialize on s, T
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            kind = "i32" if arg == "len_ptr" else (
                "fp32" if arg in ACC_ARGS or (arg in STATE_ARGS and dtype == "bf16") else dtype)
            signature[arg] = "*" + kind
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(launch))


def _resources(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL of the cubin's one kernel, from cuobjdump -res-usage."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def compile_all(arch: int) -> list:
    rows = []
    for name, H, P, dtype, constexprs, launch in launcher_configs():
        row = dict(kernel=name, H=H, P=P, dtype=dtype, mode=constexprs["MODE"] if "MODE" in
                   constexprs else 0, save=constexprs.get("SAVE"), arch=arch)
        try:
            k = _compile(name, H, P, dtype, constexprs, launch, arch)
        except Exception as e:  # reported per config by the test
            row["error"] = f"{type(e).__name__}: {e}"[-2000:]
        else:
            row.update(_resources(k.asm["cubin"]), dyn_shared=k.metadata.shared)
        rows.append(row)
    return rows


@pytest.mark.parametrize("arch", ARCHS, ids=[f"sm_{a}" for a in ARCHS])
def test_kernels_compile_without_spills(arch):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = child_env()
    r = subprocess.run([sys.executable, os.path.abspath(__file__), str(arch)], env=env, cwd=root,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert rows, "no kernel configuration was compiled"
    print(f"\nsm_{arch}: kernel, mode, H, P, dtype, save -> REG STACK LOCAL SHARED dyn_shared")
    for row in rows:
        print(" ", _describe(row))
    errors = [_describe(r) for r in rows if "error" in r]
    assert not errors, "compile errors:\n" + "\n".join(errors)
    spilling = [_describe(r) for r in rows if r.get("LOCAL", 0) or r.get("STACK", 0)]
    assert not spilling, "register spills (local memory) in production configs:\n" + "\n".join(
        spilling)


def _describe(row: dict) -> str:
    head = (f"{row['kernel']} mode={row['mode']} H={row['H']} P={row['P']} {row['dtype']} "
            f"save={row['save']}")
    if "error" in row:
        return f"{head}: {row['error']}"
    return (f"{head}: REG={row.get('REG')} STACK={row.get('STACK')} LOCAL={row.get('LOCAL')} "
            f"SHARED={row.get('SHARED')} dyn_shared={row['dyn_shared']}")


if __name__ == "__main__":
    print(json.dumps(compile_all(int(sys.argv[1]))))
