"""The README's benchmark table, generated from the newest result file of each device in
benchmarks/results/ (never written by hand).

    python -m benchmarks.readme_table           # rewrite the table in README.md
    python -m benchmarks.readme_table --check   # exit 1 if README.md is not up to date
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- benchmark-table:start -->", "<!-- benchmark-table:end -->"


def newest_per_device() -> list:
    """(path, data) of the newest committed result file per device and set of ops (by its
    recorded date): a run of ``--ops variants,decoder`` does not replace the default run's."""
    newest = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path.name.startswith("latest-"):
            continue  # the runner's default output, not a committed result
        data = json.loads(path.read_text())
        ops = tuple(sorted(data["metadata"].get("settings", {}).get("ops", ())))
        key = data["metadata"]["device"], data["metadata"]["device_name"], ops
        if key not in newest or data["metadata"]["date_utc"] > newest[key][1]["metadata"]["date_utc"]:
            newest[key] = (path, data)
    return [newest[k] for k in sorted(newest)]


def _fused_label(row: dict) -> str:
    """The backend, with its setting where the row has one: "cpu", "cpu+recompute"."""
    return row["implementation"].split(":", 1)[1]


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def recurrence_lines(rows: list) -> list:
    fused = [r for r in rows if "cell" in r and r.get("backend") and r["backend"] != "reference"
             and "median_ms" in r]
    peak = {(r["cell"], r["B"], r["mode"], r["implementation"]): r.get("peak_mib") for r in rows
            if "cell" in r}
    # Result files from before the compiled cell loop was a baseline have no such ratio.
    compiled = any("vs_compiled_cell_loop" in r for r in fused)
    lines = ["| cell | shape | mode | backend | ms | vs torch.nn | vs cell loop | "
             + ("vs compiled loop | " if compiled else "") + "peak MiB vs torch.nn |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if compiled else "")]
    for r in fused:
        mine, base = peak.get((r["cell"], r["B"], r["mode"], r["implementation"])), \
            peak.get((r["cell"], r["B"], r["mode"], "torch.nn"))
        mem = f"{mine:.1f} vs {base:.1f}" if mine is not None and base is not None else "-"
        vs_compiled = f"{_ratio(r.get('vs_compiled_cell_loop'))} | " if compiled else ""
        lines.append(f"| {r['cell']} | T{r['T']} B{r['B']} I{r['I']} H{r['H']} | {r['mode']} | "
                     f"{_fused_label(r)} | {r['median_ms']:.1f} | {_ratio(r.get('vs_torch_nn'))} | "
                     f"{_ratio(r.get('vs_cell_loop'))} | {vs_compiled}{mem} |")
    return lines


def _markdown(header: list, cells: list, blank_before: bool = True) -> list:
    """A markdown table of ``cells`` (rows of strings) under ``header``; [] without rows."""
    if not cells:
        return []
    return ([""] if blank_before else []) + [
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(c) + " |" for c in cells]


def attention_lines(rows: list) -> list:
    fused = [r for r in rows if "kind" in r and r["backend"] != "reference" and "median_ms" in r]
    return _markdown(
        ["attention", "shape", "mode", "backend", "ms", "vs reference", "peak memory vs reference"],
        [[r["kind"], f"B{r['B']} Tq{r['Tq']} Tk{r['Tk']} D{r['D']}", r["mode"], r["backend"],
          f"{r['median_ms']:.2f}", _ratio(r.get("vs_reference")),
          _ratio(r.get("peak_vs_reference"))] for r in fused])


def variant_lines(rows: list) -> list:
    fused = [r for r in rows if "variant" in r and r["implementation"] != "plain-pytorch"]
    return _markdown(
        ["variant", "shape", "mode", "implementation", "ms", "vs plain PyTorch"],
        [[r["variant"], f"T{r['T']} B{r['B']} I{r['I']} H{r['H']}", r["mode"],
          r["implementation"], f"{r['median_ms']:.1f}", _ratio(r.get("vs_plain"))]
         for r in fused], blank_before=False)


def decoder_lines(rows: list) -> list:
    dec = [r for r in rows if r.get("op") == "decoder"]
    return _markdown(
        ["decoder step", "shape", "mode", "torch.nn parts us", "fused us", "speed-up [min, max]"],
        [[r["cell"], f"B{r['B']} H{r['H']} Tk{r['Tk']}", r["mode"],
          f"{r['torch_parts_us_per_step']:.0f}", f"{r['fused_us_per_step']:.0f}",
          f"{r['speedup']:.2f}x [{r['speedup_min']:.2f}, {r['speedup_max']:.2f}]"] for r in dec])


def table() -> str:
    parts = []
    for path, data in newest_per_device():
        m = data["metadata"]
        parts.append(f"**{m['device_name']}** ({m['device']}, {m['torch_threads']} threads, "
                     f"{m['dtype']}, torch {m['torch']}, {m['date_utc'][:10]}, commit "
                     f"{(m['git_commit'] or '?')[:10]}): `{path.relative_to(ROOT)}`, median of "
                     f"{m['settings']['repeats']} runs; ratios below 1 are faster / smaller.")
        parts.append("")
        rows = data["rows"]
        body = (recurrence_lines(rows) if any("cell" in r and "backend" in r for r in rows) else [])
        parts.extend(body + attention_lines(rows) + variant_lines(rows) + decoder_lines(rows))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def updated_readme() -> str:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}{END}{tail}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.readme_table", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = p.parse_args(argv)
    new = updated_readme()
    if args.check:
        if new != README.read_text():
            print("README.md's benchmark table is stale: run python -m benchmarks.readme_table")
            return 1
        return 0
    README.write_text(new)
    print("README.md: benchmark table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
