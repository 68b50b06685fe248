"""The variant recurrences' Triton kernels compile for sm_80 and sm_90 in every
configuration their launcher picks (H in 128..1024; fp32, bf16 and fp64; LSTM and GRU,
with and without layer norm; saving or not), with zoneout, lengths and reverse on (the
most code), and spill no registers. The machinery (cuobjdump, the subprocess without
``TRITON_INTERPRET``) is tests/test_triton_compile.py's. Run as a script to print the
table: ``python tests/test_variants_triton_compile.py 90``."""

import json
import os
import sys

import pytest
import torch
from fused_rnn.testing import child_env

triton = pytest.importorskip("triton", reason="triton is not installed: no kernels to compile")

from test_triton_compile import ARCHS, B, HIDDEN, _resources  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
ACC_ARGS = {"dh_ptr", "dc_ptr"}  # fp32 (fp64 for fp64 inputs) whatever the input dtype
STATE_ARGS = {"cs_ptr", "gh_ptr", "act_ptr", "stat_ptr"}  # fp32 for half inputs


def launcher_configs():
    """(kernel, H, dtype, constexprs, launch options), each binary once (the runtime
    sizes do not change it, so it is compiled at the first H that uses it)."""
    from fused_rnn.ops.variants import triton as launcher
    from fused_rnn.ops.variants import triton_kernels as K

    out, seen = [], set()
    for H in HIDDEN:
        for mode in (K.LSTM_MODE, K.GRU_MODE):
            for dtype in DTYPES:
                for ln in (False, True):
                    cfg = launcher.kernel_config(H, DTYPES[dtype])
                    const = dict(MODE=mode, LN=ln, KEEP_H=True, KEEP_C=mode == K.LSTM_MODE,
                                 HAS_LENGTHS=True, REVERSE=True,
                                 ACC="fp64" if dtype == "fp64" else "fp32", PRECISION="ieee",
                                 BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k)
                    launch = launcher.rec._launch(cfg)
                    for save in (True, False):
                        out.append(("variant_fwd_kernel", H, dtype, dict(const, SAVE=save),
                                    launch))
                    out.append(("variant_bwd_kernel", H, dtype, const, launch))
    unique = []
    for c in out:
        key = (c[0], c[2], tuple(sorted(c[3].items())))
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _compile(name, H, dtype, constexprs, launch, arch):
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fused_rnn.ops.variants import triton_kernels as K

    fn = getattr(K, name)
    ints = {"B": B, "H": H, "T": 100}
    consts = {k: (getattr(tl, {"fp32": "float32", "fp64": "float64"}[v])
                  if k == "ACC" else v) for k, v in constexprs.items()}
    acc = "fp64" if dtype == "fp64" else "fp32"
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in consts:
            signature[arg] = "constexpr"
        elif arg in ints:
            signature[arg] = "i32"
            if ints[arg] % 16 == 0 and arg != "T":  # do_not_specialize on T
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            kind = "i32" if arg == "len_ptr" else (
                acc if arg in ACC_ARGS or (arg in STATE_ARGS and dtype == "bf16") else dtype)
            signature[arg] = "*" + kind
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(launch))


def compile_all(arch: int) -> list:
    rows = []
    for name, H, dtype, constexprs, launch in launcher_configs():
        row = dict(kernel=name, H=H, dtype=dtype, mode=constexprs["MODE"], ln=constexprs["LN"],
                   save=constexprs.get("SAVE"), arch=arch)
        try:
            k = _compile(name, H, dtype, constexprs, launch, arch)
        except Exception as e:  # reported per config by the test
            row["error"] = f"{type(e).__name__}: {e}"[-2000:]
        else:
            row.update(_resources(k.asm["cubin"]), dyn_shared=k.metadata.shared)
        rows.append(row)
    return rows


def _describe(row: dict) -> str:
    head = (f"{row['kernel']} mode={row['mode']} ln={row['ln']} H={row['H']} {row['dtype']} "
            f"save={row['save']}")
    if "error" in row:
        return f"{head}: {row['error']}"
    return (f"{head}: REG={row.get('REG')} STACK={row.get('STACK')} LOCAL={row.get('LOCAL')} "
            f"SHARED={row.get('SHARED')} dyn_shared={row['dyn_shared']}")


@pytest.mark.parametrize("arch", ARCHS, ids=[f"sm_{a}" for a in ARCHS])
def test_variant_kernels_compile_without_spills(arch):
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.abspath(__file__), str(arch)], env=child_env(),
                       cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 * 3 * 2 * 3, "expected every mode x dtype x LN x kernel to compile"
    print(f"\nsm_{arch}: kernel, mode, LN, H, dtype, save -> REG STACK LOCAL SHARED dyn_shared")
    for row in rows:
        print(" ", _describe(row))
    errors = [_describe(r) for r in rows if "error" in r]
    assert not errors, "compile errors:\n" + "\n".join(errors)
    spilling = [_describe(r) for r in rows if r.get("LOCAL", 0) or r.get("STACK", 0)]
    assert not spilling, "register spills (local memory) in production configs:\n" + "\n".join(
        spilling)


if __name__ == "__main__":
    print(json.dumps(compile_all(int(sys.argv[1]))))
