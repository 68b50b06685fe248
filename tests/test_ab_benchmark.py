"""benchmarks/ab.py: each variant of the environment timed in its own processes, the first
variant the baseline of the ratios; a malformed variant is refused before anything runs."""

import pytest

import fused_rnn
from benchmarks import ab


@pytest.mark.skipif("cpu" not in fused_rnn.available_backends(), reason="the cpu backend is not built")
def test_variants_are_timed_in_order_against_the_first(capsys):
    ab.main(["--cell", "rnn", "--shape", "5,2,4,4", "--variant", "-", "--variant",
             "FUSED_RNN_CPU_SUM_ROWS=2,FUSED_RNN_CPU_INPUT_GEMM=1", "--rounds", "1",
             "--warmup", "1", "--repeats", "2", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("rnn T5 B2 I4 H4 fwd+bwd float32 fused_rnn:cpu")
    rows = [[c.strip() for c in line.split("|")] for line in lines[2:]]
    assert [r[0] for r in rows] == ["-", "FUSED_RNN_CPU_SUM_ROWS=2,FUSED_RNN_CPU_INPUT_GEMM=1"]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert rows[0][3] == "1.00"


def test_variants_parse_and_a_malformed_one_is_refused(capsys):
    assert ab.parse_variant("-") == {}
    assert ab.parse_variant("A=1,B=") == {"A": "1", "B": ""}
    with pytest.raises(SystemExit) as e:
        ab.main(["--variant", "-", "--variant", "NOVALUE"])
    assert e.value.code == 2
    assert "--variant: expected NAME=VALUE" in capsys.readouterr().err
