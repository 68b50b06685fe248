"""64-bit indexing where products of sizes can pass 2^31 elements, checked in little memory.

Triton: every kernel is lowered to TTIR for sm_90 (no GPU needed, ~0.3 s each) and the
address arithmetic is read from it: no pointer offset may come from a 32-bit product of
two runtime values (``rows * P`` with rows int32 wraps once T*B*H > 2^31; Triton's
program ids, aranges and integer arguments are int32 unless cast). Products with a
constant (``pid * BLOCK``) stay bounded by one size and are allowed, and so are products
with an index inside a tile (``tl.arange(0, BLOCK)[:, None] * n_cols``, below BLOCK times
one row: the kernels add the 64-bit offset of a tile's first row to its base pointer and
keep the offsets inside the tile 32-bit, which holds while a row times the tallest tile,
128, stays below 2^31, rows under 16M elements). The trace stops at loop induction
variables (bounded by one size, ``range(0, P, BLOCK)``), but a product of one with a size
(``k0 * P``) is flagged. No exceptions: any 32-bit product of two sizes fails.

C++ (csrc/cpu): the kernels index raw pointers with int64_t sizes (kernels.h, StepShape,
AttnArgs) and copy strided inputs to contiguous ones first, so no view can reach them with a
large offset in small memory; instead a source check keeps 32-bit ``int`` out of their
index arithmetic.
"""

import json
import os
import re
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed: no kernels to lower")
import triton.language as tl  # noqa: E402
from fused_rnn.testing import child_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the analysis (pure text, runs anywhere) ---

_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)?\s*=\s*([\w.]+)\b(.*)$")
_NAME = re.compile(r"%[\w.$-]+")
_LOC = re.compile(r"loc\((#loc\d*)\)\s*$")
_I32 = re.compile(r"(?:^|[x<\s])i32>?\s*$")


def _parse(text: str):
    """SSA defs {name: (op, operands, result type, loc)} and loc table {#locN: body}."""
    defs, locs = {}, {}
    for line in text.splitlines():
        if line.startswith("#loc"):
            key, _, body = line.partition(" = ")
            locs[key.strip()] = body.strip()
            continue
        m = _DEF.match(line)
        if not m:
            continue
        name, op, rest = m.groups()
        loc = _LOC.search(rest)
        body = rest[:loc.start()] if loc else rest
        head, _, rtype = body.rpartition(" : ")
        operands = [o.split("#")[0] for o in _NAME.findall(head)]
        defs[name] = (op, operands, rtype.strip(), loc.group(1) if loc else None)
    return defs, locs


def _source_line(loc, locs, depth=0):
    """'file.py:line' of a TTIR location (through names and call sites)."""
    body = locs.get(loc, "")
    m = re.match(r'loc\("([^"]+)":(\d+):\d+\)', body)
    if m:
        return f"{os.path.basename(m.group(1))}:{m.group(2)}", m.group(1), int(m.group(2))
    inner = re.findall(r"#loc\d*", body)
    if inner and depth < 50:
        return _source_line(inner[0], locs, depth + 1)
    return None, None, None


def narrow_address_products(text: str) -> list:
    """Source lines whose 32-bit product of two runtime values feeds a pointer offset."""
    defs, locs = _parse(text)

    def constant(name, seen=()):
        """A compile-time constant or an index within a tile (tl.arange), reshaped."""
        d = defs.get(name)
        if d is None or name in seen:
            return False
        if d[0] in ("arith.constant", "tt.make_range"):
            return True
        return d[0] in ("tt.splat", "tt.broadcast", "tt.expand_dims", "arith.extsi",
                        "arith.extui") and all(constant(o, seen + (name,)) for o in d[1])

    found, seen = set(), set()
    stack = [ops[1][1] for ops in defs.values() if ops[0] == "tt.addptr" and len(ops[1]) == 2]
    while stack:
        name = stack.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        op, operands, rtype, loc = defs[name]
        if op == "arith.muli" and _I32.search(rtype) and not any(constant(o) for o in operands):
            where, path, line = _source_line(loc, locs)
            code = ""
            if path and os.path.exists(path):
                with open(path) as f:
                    code = f.read().splitlines()[line - 1].strip()
            found.add(f"{where}: {code}")
        if not op.startswith("scf."):  # a loop's result: its body is not traced
            stack.extend(operands)
    return sorted(found)


# --- lowering to TTIR (in a subprocess: the tests' process runs Triton interpreted) ---

def lower(fn, signature: dict, constexprs: dict) -> str:
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    options = backend.parse_options({"num_warps": 4})
    stages = {}
    backend.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, options, backend.get_codegen_implementation(options),
                         backend.get_module_map(), context)
    return str(stages["ttir"](module, {"hash": "large-index", "target": target,
                                       **options.__dict__}))


@triton.jit
def _probe_kernel(x_ptr, n_rows, n_cols, WIDE: tl.constexpr, TILE: tl.constexpr,
                  BLOCK: tl.constexpr):
    """The analysis' own check: rows * n_cols is 32-bit unless WIDE; with TILE, the tile's
    first row is a 64-bit offset and the offsets inside it are 32-bit (allowed)."""
    r0 = tl.program_id(0) * BLOCK
    rows = r0 + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK)
    ok = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    if TILE:
        tile = x_ptr + tl.cast(r0, tl.int64) * n_cols
        tl.store(tile + tl.arange(0, BLOCK)[:, None] * n_cols + cols[None, :], 1.0, mask=ok)
    else:
        if WIDE:
            rows = rows.to(tl.int64)
        tl.store(x_ptr + rows[:, None] * n_cols + cols[None, :], 1.0, mask=ok)


def _signature(fn, consts, ints, int_ptrs=(), acc_ptrs=(), dtype="bf16"):
    sig = {}
    for a in fn.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a in ints:
            sig[a] = "i32"
        else:
            sig[a] = "*i32" if a in int_ptrs else "*u8" if a == "valid_ptr" else (
                "*fp32" if a in acc_ptrs else "*" + dtype)
    return sig


def recurrence_cases():
    from fused_rnn.ops.recurrence import triton_kernels as K

    ints = ("s", "B", "H", "P", "T")
    acc = ("dh_ptr", "dyp_ptr", "dc_ptr", "cs_ptr")
    base = dict(HAS_LENGTHS=True, REVERSE=True, ACC=tl.float32, PRECISION="ieee", BLOCK_K=32)
    for mode in (K.LSTM_MODE, K.GRU_MODE, K.TANH_MODE):
        for proj in ((False, True) if mode == K.LSTM_MODE else (False,)):
            c = dict(base, MODE=mode, PROJ=proj)
            yield K.recurrence_fwd_step_kernel, dict(c, SAVE=True, BLOCK_B=32, BLOCK_H=32)
            yield K.recurrence_fwd_seq_kernel, dict(c, SAVE=True, BLOCK_B=32, BLOCK_H=32)
            yield K.recurrence_bwd_step_kernel, dict(c, BLOCK_B=32, BLOCK_P=32)
            yield K.recurrence_bwd_seq_kernel, dict(c, BLOCK_B=32, BLOCK_P=32)
    yield K.projection_fwd_step_kernel, dict(base, SAVE=True, BLOCK_B=32, BLOCK_P=32)
    yield K.projection_bwd_step_kernel, dict(base, BLOCK_B=32, BLOCK_H=32)


def variant_cases():
    from fused_rnn.ops.variants import triton_kernels as K

    for mode in (K.LSTM_MODE, K.GRU_MODE):
        for ln in (False, True):
            c = dict(MODE=mode, LN=ln, KEEP_H=True, KEEP_C=mode == K.LSTM_MODE, HAS_LENGTHS=True,
                     REVERSE=True, ACC=tl.float32, PRECISION="ieee", BLOCK_B=16, BLOCK_H=32,
                     BLOCK_K=32)
            yield K.variant_fwd_kernel, dict(c, SAVE=True)
            yield K.variant_bwd_kernel, c


def attention_cases():
    from fused_rnn.ops.attention import triton_kernels as K

    for additive in (False, True):
        for use_dot in ((False, True) if not additive else (False,)):
            c = dict(ADDITIVE=additive, HAS_MASK=True, USE_DOT=use_dot, PRECISION="ieee",
                     ACC=tl.float32, BLOCK_M=16, BLOCK_N=32, BLOCK_K=32)
            for split in (False, True):
                yield K._attn_fwd, dict(c, SPLIT=split, BLOCK_C=32)
            yield K._attn_weights, c
            yield K._attn_bwd_dkx, dict(c, HAS_DW=True, BLOCK_C=32)
            yield K._attn_bwd_dq, dict(c, HAS_DW=True, BLOCK_C=32)
    yield K._attn_combine, dict(ACC=tl.float32, BLOCK_S=8, BLOCK_C=32)


def analyse_all() -> dict:
    """{"probe": {...}, "recurrence"|"variants"|"attention": {kernel: [lines]}}."""
    out = {"probe": {}, "recurrence": {}, "variants": {}, "attention": {}}
    for kind in ("narrow", "wide", "tile"):
        consts = dict(WIDE=kind == "wide", TILE=kind == "tile", BLOCK=32)
        text = lower(_probe_kernel, _signature(_probe_kernel, consts, ("n_rows", "n_cols"),
                                               acc_ptrs=("x_ptr",)), consts)
        out["probe"][kind] = narrow_address_products(text)
    rec_ints = ("s", "B", "H", "P", "T")
    rec_acc = ("dh_ptr", "dyp_ptr", "dc_ptr", "cs_ptr")
    for fn, consts in recurrence_cases():
        sig = _signature(fn, consts, rec_ints, int_ptrs=("len_ptr",), acc_ptrs=rec_acc)
        out["recurrence"].setdefault(fn.__name__, set()).update(
            narrow_address_products(lower(fn, sig, consts)))
    var_acc = ("dh_ptr", "dc_ptr", "cs_ptr", "gh_ptr", "act_ptr", "stat_ptr")
    for fn, consts in variant_cases():
        sig = _signature(fn, consts, ("B", "H", "T"), int_ptrs=("len_ptr",), acc_ptrs=var_acc)
        out["variants"].setdefault(fn.__name__, set()).update(
            narrow_address_products(lower(fn, sig, consts)))
    att_ints = ("Tq", "Tk", "D", "Dv", "keys_per_split", "n_split")
    att_acc = ("lse_ptr", "m_ptr", "s_ptr", "delta_ptr", "dwp_ptr", "scale_ptr", "part_ptr")
    for fn, consts in attention_cases():
        sig = _signature(fn, consts, att_ints, acc_ptrs=att_acc)
        out["attention"].setdefault(fn.__name__, set()).update(
            narrow_address_products(lower(fn, sig, consts)))
    for family in ("recurrence", "variants", "attention"):
        out[family] = {k: sorted(v) for k, v in out[family].items()}
    return out


@pytest.fixture(scope="module")
def analysis():
    env = child_env()
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_check_sees_a_32_bit_row_offset(analysis):
    assert analysis["probe"]["narrow"] and "rows[:, None] * n_cols" in analysis["probe"]["narrow"][0]
    assert analysis["probe"]["wide"] == []
    assert analysis["probe"]["tile"] == []  # 64-bit tile start, 32-bit offsets inside


def _assert_none(per_kernel: dict):
    found = sorted({line for lines in per_kernel.values() for line in lines})
    assert not found, "32-bit products of sizes in addresses (make one factor int64, or " \
        "add a 64-bit tile start to the base pointer):\n" + "\n".join(found)


def test_attention_kernels_compute_offsets_in_64_bit(analysis):
    assert set(analysis["attention"]) == {"_attn_fwd", "_attn_combine", "_attn_weights",
                                          "_attn_bwd_dkx", "_attn_bwd_dq"}
    _assert_none(analysis["attention"])


def test_recurrence_kernels_compute_offsets_in_64_bit(analysis):
    assert len(analysis["recurrence"]) == 6
    _assert_none(analysis["recurrence"])


def test_variant_kernels_compute_offsets_in_64_bit(analysis):
    assert set(analysis["variants"]) == {"variant_fwd_kernel", "variant_bwd_kernel"}
    _assert_none(analysis["variants"])


# --- C++ ---

CPP_DIR = os.path.join(ROOT, "csrc", "cpu")
# A 32-bit variable or cast: `int x = ...`, `int(...)`, `static_cast<int>`, int32_t, unsigned.
_NARROW = re.compile(r"(?<!constexpr )\bint\s+\w+\s*=|\bint\(|static_cast<int>|\bint32_t\b|"
                     r"\bunsigned\b")
# Allowed: counters bounded by compile-time tiles, the row count of one tile, the MKL calls
# (LP64 ints; recurrence.cpp checks every size < 2^31 first) and the capability enum.
_ALLOWED = re.compile(r"for \(int (r|v|u|s) = 0; \1 < (MR|M|NV|m|uv|nseg);|with_rows<MR>\(int\(|"
                      r"after\(s, g, int\(|cblas_sgemm|int\((m|m_|n_|k_|bytes|w\.size\(1\))\)|"
                      r"static_cast<int>\((cap|best)\)")


def _narrow_ints(path):
    with open(path) as f:
        for no, line in enumerate(f, 1):
            code = line.split("//")[0]
            if _NARROW.search(code) and not _ALLOWED.search(code):
                yield f"{os.path.basename(path)}:{no}: {line.strip()}"


def test_the_cpp_check_sees_a_32_bit_offset(tmp_path):
    src = tmp_path / "kernel.h"
    src.write_text("  int off = b * H + j;\n  const int64_t fine = b * H + j;\n")
    assert [u.split(": ", 1)[1] for u in _narrow_ints(str(src))] == ["int off = b * H + j;"]


def test_cpp_kernels_index_with_64_bit_sizes():
    files = [os.path.join(CPP_DIR, n) for n in sorted(os.listdir(CPP_DIR))
             if n.endswith((".h", ".cpp"))]
    assert files, "no C++ sources found"
    uses = [u for p in files for u in _narrow_ints(p)]
    assert not uses, ("32-bit integers in the CPU kernels (use int64_t for sizes and "
                      "offsets):\n" + "\n".join(uses))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter does not lower kernels")
    print(json.dumps(analyse_all()))
