"""The toolkit's randomness does not depend on the world size: 2 DDP ranks with batch b train the weights that one
process with batch 2b trains, with GP, lazy R1, PacGAN, instance noise, DiffAugment and bCR all on."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import gandist
from closekit import compare_state, matches

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
COMMON = ["--set", "telemetry.progress=false", "--set", "telemetry.sample_every=0", "--set", "checkpoint.every=3",
          "--set", "train.steps=3"]
TOY = ["configs/toy_ring8_tiny.yaml", "--set", "train.batch_size=32", "--set", "augment.pack=2",
       "--set", "augment.instance_noise.std=0.1", "--set", "augment.instance_noise.anneal_steps=10",
       "--set", "penalties=[{kind: gp, weight: 1.0}, {kind: r1, weight: 1.0, every: 2}]"]
# G's conv biases feed a BatchNorm, so their true gradient is 0 and Adam (eps 1e-8) turns their float-noise
# gradients into lr-sized, rank-count-dependent steps (2e-3 relative, with or without the toolkit); eps 1e-3 in G
# keeps that noise from masking the comparison while the other weights still train
DIGITS = ["configs/demo_digits.yaml", "--set", "train.batch_size=16", "--set", "model.ch=8",
          "--set", "optim.g.eps=1e-3", "--set", "distributed.cross_replica_bn=true", "--set", "augment.diffaugment=color,translation,cutout",
          "--set", "penalties=[{kind: bcr, weight: 1.0}]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gandist(argv: list[str], nproc: int) -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master-addr",
                "127.0.0.1", "--master-port", str(_free_port())] if nproc > 1 else [sys.executable]
    result = subprocess.run([*launcher, "-m", "gandist", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def _mismatch(run_a, run_b) -> dict[str, dict]:
    """Per net: tests/closekit.py's report (model-wide relative error, worst elementwise excess and where)."""
    a, b = gandist.load_run(str(run_a)), gandist.load_run(str(run_b))
    return {net: compare_state(getattr(a, net).state_dict(), getattr(b, net).state_dict())
            for net in ("G", "D", "G_ema")}


@pytest.mark.parametrize("base", [TOY, DIGITS], ids=["toy-gp-r1-pack-noise", "digits-diffaugment-bcr"])
def test_two_ddp_ranks_train_the_weights_of_one_process(base, tmp_path):
    _gandist(["train", *base, *COMMON, "--run-dir", str(tmp_path / "single")], nproc=1)
    _gandist(["train", *base, *COMMON, "--set", "distributed.strategy=ddp", "--run-dir", str(tmp_path / "ddp")],
             nproc=2)
    errors = _mismatch(tmp_path / "ddp", tmp_path / "single")
    assert all(matches(e) for e in errors.values()), errors
