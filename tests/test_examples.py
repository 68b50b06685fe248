"""The examples run end to end (a short training run), on the best compiled backend."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_seq2seq_attention_example_trains_and_decodes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # not the interpreter
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "seq2seq_attention.py"),
                        "--steps", "40", "--heatmap", str(tmp_path / "attention.png")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if "greedy whole-sequence accuracy" in ln]
    assert line, r.stdout
    accuracy = float(line[0].rsplit(":", 1)[1])
    assert 0.0 <= accuracy <= 1.0
    if "matplotlib is not installed" not in r.stdout:
        assert (tmp_path / "attention.png").stat().st_size > 0
