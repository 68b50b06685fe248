"""Every Triton attention kernel compiles for sm_80 and sm_90 in the configurations its
launchers pick for large sizes (D in {256, 1024}, fp32 and bf16, a decoder step that splits
the keys and a whole sequence), without spilling registers. Needs no GPU: the launchers run
on meta tensors with a launch function that compiles instead. The compile runs in a
subprocess without TRITON_INTERPRET, which would make the kernels interpreted functions.

Run as a script to see the table: ``python tests/test_attention_triton_compile.py``.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from fused_rnn.testing import child_env

TARGETS = ((80, 32), (90, 32))
# (kind, dtype, B, Tq, Tk, D): a decoder step over a long source (split keys) and a whole
# target sequence (tl.dot tiles for the dot score).
CASES = [(kind, dtype, B, Tq, Tk, D)
         for kind in ("dot", "additive")
         for dtype in ("float32", "bfloat16")
         for D in (256, 1024)
         for (B, Tq, Tk) in ((8, 1, 1024), (32, 64, 64))]
_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16",
        torch.float64: "*fp64", torch.uint8: "*u8"}


def _signature(fn, args, consts):
    sig = {}
    for name, a in zip(fn.arg_names, args):
        sig[name] = _PTR[a.dtype] if isinstance(a, torch.Tensor) else "i32"
    return dict(sig, **{name: "constexpr" for name in consts})


def _ptxas_usage(ptx: str, capability: int) -> dict:
    """Registers and spill bytes from ``ptxas -v`` (what a GPU driver would report)."""
    from triton.backends.nvidia import compiler as nv

    try:  # its signature and result differ between Triton versions
        tool = nv.get_ptxas(capability)
    except TypeError:
        tool = nv.get_ptxas()
    ptxas = tool.path if hasattr(tool, "path") else tool[0]
    arch = nv.sm_arch_from_capability(capability) if hasattr(nv, "sm_arch_from_capability") \
        else f"sm_{capability}{'a' if capability == 90 else ''}"
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"attn_{os.getpid()}.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    try:
        log = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.remove(path)
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(regs.group(1)), "spill_stores": int(spills.group(1)),
            "spill_loads": int(spills.group(2))}


def compile_all() -> list:
    """One record per (case, kernel launch, target)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from fused_rnn.ops.attention import triton as tattn

    records, seen = [], {}
    for kind, dtype_name, B, Tq, Tk, D in CASES:
        dtype = getattr(torch, dtype_name)

        def launch(kernel, grid, args, consts, num_warps):
            key = (kernel.__name__, tuple(sorted((k, str(v)) for k, v in consts.items())),
                   tuple(_signature(kernel, args, consts).values()), num_warps)
            for cc, warp in TARGETS:
                if (key, cc) not in seen:
                    sig = _signature(kernel, args, consts)
                    src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=consts)
                    k = triton.compile(src, target=GPUTarget("cuda", cc, warp),
                                       options={"num_warps": num_warps})
                    seen[(key, cc)] = dict(_ptxas_usage(k.asm["ptx"], cc),
                                           shared=k.metadata.shared)
                consts_str = " ".join(f"{n}={v}" for n, v in consts.items()
                                      if n.startswith(("BLOCK", "USE_DOT", "SPLIT")))
                records.append(dict(seen[(key, cc)], case=f"{kind} {dtype_name} B={B} Tq={Tq} "
                                    f"Tk={Tk} D={D}", kernel=kernel.__name__, sm=cc,
                                    config=f"{consts_str} warps={num_warps}"))

        meta = dict(device="meta", dtype=dtype)
        q = torch.empty(B, Tq, D, **meta)
        k, x = torch.empty(B, Tk, D, **meta), torch.empty(B, Tk, D, **meta)
        v = torch.empty(D, **meta) if kind == "additive" else None
        valid = torch.empty(B, Tk, device="meta", dtype=torch.bool)
        ctx, w, saved = tattn._fwd(q, k, x, valid, kind, v, 0.1, True, launch=launch)
        tattn._bwd(q, k, x, valid, kind, v, 0.1, saved, torch.empty_like(ctx), torch.empty_like(w),
                   launch=launch)
    return records


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills():
    pytest.importorskip("triton", reason="triton is not installed")
    env = child_env()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--json"], env=env, cwd=root,
                       capture_output=True, text=True)
    assert r.returncode == 0, f"compile failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    records = json.loads(r.stdout.strip().splitlines()[-1])
    print(_table(records))
    kernels = {rec["kernel"] for rec in records}
    assert kernels == {"_attn_fwd", "_attn_combine", "_attn_weights", "_attn_bwd_dkx",
                       "_attn_bwd_dq"}, kernels
    assert {rec["sm"] for rec in records} == {cc for cc, _ in TARGETS}
    spilled = [rec for rec in records if rec["spill_stores"] or rec["spill_loads"]]
    assert not spilled, "register spills:\n" + _table(spilled)


def _table(records) -> str:
    rows = [f"{'case':36} {'kernel':14} sm  regs spill(st/ld) shared  config"]
    for r in records:
        rows.append(f"{r['case']:36} {r['kernel']:14} {r['sm']}  {r['registers']:4} "
                    f"{r['spill_stores']:6}/{r['spill_loads']:<6} {r['shared']:6}  {r['config']}")
    return "\n".join(rows)


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")
    out = compile_all()
    print(json.dumps(out) if "--json" in sys.argv else _table(out))
