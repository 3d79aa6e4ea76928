"""tools/bench/models.py runs end to end and prints a row per family, resolution and net."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_models_bench_prints_g_and_d_rows_with_ratios():
    proc = subprocess.run([sys.executable, "tools/bench/models.py", "--res", "32", "--no-compile", "--batch", "1",
                           "--warmup", "0", "--iters", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("biggan", "stylegan2"))]
    assert [(r[0], r[1], r[2]) for r in rows] == [("biggan", "32", "G"), ("biggan", "32", "D"),
                                                 ("stylegan2", "32", "G"), ("stylegan2", "32", "D")]
    for r in rows:
        assert float(r[3]) > 0 and r[4] == "(1.00x)"  # eager column is the reference
