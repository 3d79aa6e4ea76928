"""tools/gpu_check.py --device cpu --tiny: the GPU check's table comes out whole on CPU, with measured s/kimg for
both nets, gandist's host syncs counted per step, and every CUDA-only row skipped with its reason."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.train.test_host_syncs import MAX_SYNCS

ROOT = Path(__file__).resolve().parents[2]
CUDA_ONLY = ["ddp + cross-replica bn, nccl, world size 1", "zero2 on cuda", "train.compile on cuda"]
NETS = {"biggan-128 bf16 s/kimg": "biggan_tiny_digits", "stylegan2-256 bf16 s/kimg": "stylegan2_tiny_digits"}


def test_cpu_tiny_table_has_every_row_with_numbers_or_the_skip_reason(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--tiny", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("gandist GPU check: device cpu") and "tiny nets" in lines[0]
    assert lines[1:3] == ["| check | result | note |", "|---|---|---|"]
    table = {}
    for line in lines[3:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 3, line
        table[cells[0]] = cells[1:]
    rows = json.loads(out.read_text())["rows"]
    assert list(table) == list(rows) == [*NETS, "syncs per step", *CUDA_ONLY]

    for row, config in NETS.items():
        result, note = table[row]
        match = re.fullmatch(r"([0-9.]+) s/kimg \(4 img/step, ([0-9]+) ms/step\)", result)
        assert match and float(match[1]) > 0 and int(match[2]) > 0, result
        assert abs(rows[row]["value"] - float(match[1])) < 0.01  # the JSON holds the printed number
        assert f"configs/{config}.yaml" in note and "amp off" in note
    assert "stylegan2-ada-pytorch 21.6 s/kimg" in table["stylegan2-256 bf16 s/kimg"][1]

    # syncs: counted per step from gandist's own code, a constant few, at least the one signals transfer
    result, note = table["syncs per step"]
    assert "skipped: no CUDA" in note and "tests/synckit.py" in note
    counts = rows["syncs per step"]["value"]
    assert sorted(counts) == sorted(f"{c}.yaml" for c in NETS.values())
    for config, per_step in counts.items():
        assert per_step and all(1 <= n <= MAX_SYNCS for n in per_step), (config, per_step)
        assert f"{Path(config).stem}: max {max(per_step)}," in result

    for row in CUDA_ONLY:
        assert table[row][0] == "skipped: no CUDA" and table[row][1], (row, table[row])
