"""The README's benchmark table is the one generated from benchmarks/results/."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_table_is_generated_from_the_newest_results():
    r = subprocess.run([sys.executable, "-m", "benchmarks.readme_table", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
