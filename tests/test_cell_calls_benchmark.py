"""benchmarks/cell_calls.py: one row per cell, size and mode, with positive times; the
command-line table prints them (its loops timed in child processes)."""

import pytest

from benchmarks import cell_calls


def test_rows_time_every_cell_size_and_mode():
    rows = cell_calls.rows(sizes=[(2, 8), (3, 16)], repeats=2, steps=2)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (c, B, H, m) for c in cell_calls.CELLS for B, H in [(2, 8), (3, 16)]
        for m in ("call", "2 calls+bwd")]
    assert all(r[4] > 0 and r[5] > 0 for r in rows)


def test_command_prints_the_table(capsys):
    # One round: each training loop row in a fresh process per implementation.
    cell_calls.main(["--cells", "GRUCell", "--sizes", "2x8", "--repeats", "2", "--steps", "2",
                     "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert "(cpu), commit " in lines[0] and "python -m benchmarks.cell_calls" in lines[0]
    assert lines[2].split("|")[0].strip() == "cell"
    assert [l.split("|")[3].strip() for l in lines[3:]] == ["call", "2 calls+bwd"]
    assert all(float(l.split("|")[4]) > 0 and float(l.split("|")[5]) > 0 for l in lines[3:])
