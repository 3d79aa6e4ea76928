"""The tiny BigGAN and StyleGAN2 configs train on digits through `gandist train`, and sample with truncation."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--set", "train.steps=3", "--set", "train.batch_size=8", "--set", "checkpoint.every=3",
        "--set", "telemetry.sample_every=0", "--set", "telemetry.log_every=1", "--set", "telemetry.progress=false",
        "--set", "train.ema.start_step=0"]


def _gandist(*args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    return subprocess.run([sys.executable, "-m", "gandist", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["biggan_tiny_digits.yaml", "stylegan2_tiny_digits.yaml"])
def test_tiny_config_trains_on_digits_and_samples_with_truncation(config, tmp_path):
    run = tmp_path / "run"
    proc = _gandist("train", f"configs/{config}", "--run-dir", str(run), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][-1] == 3
    for r in records:
        assert all(math.isfinite(v) for v in r["losses"].values()), r["losses"]

    from gandist.api import load_run

    loaded = load_run(str(run))
    assert loaded.step == 3 and loaded.G_ema is not None
    G = loaded.sampler
    x = G(torch.randn(4, G.z_dim), torch.arange(4))
    assert x.shape == (4, 1, *loaded.info.shape[1:]) and torch.isfinite(x).all()
    if config.startswith("stylegan2"):
        # truncation psi = 0 through the trained EMA generator: every sample is the mean-w image
        t0 = G(torch.randn(4, G.z_dim), torch.arange(4), truncation=0.0)
        assert torch.allclose(t0, t0[:1].expand_as(t0), atol=1e-5)
        assert loaded.G.w_avg.abs().sum() > 0  # training moved w_avg

    out = tmp_path / "grid.png"
    proc = _gandist("generate", str(run), "--num", "16", "--out", str(out), "--truncation", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
