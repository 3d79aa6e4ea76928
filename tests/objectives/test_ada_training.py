"""ADA, LeCam, top-k and the consistency variants inside training: p follows D, state resumes exactly, and two
DDP ranks train what one process trains on the same global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gandist
from closekit import compare_state, matches
from gandist.checkpoint import CheckpointStore
from gandist.config import load_config
from gandist.train.loop import run_training

REPO = Path(__file__).resolve().parents[2]
BASE = ["model.arch=dcgan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
        "train.batch_size=16", "telemetry.progress=false", "telemetry.sample_every=0", "telemetry.log_every=1",
        "train.ema.decay=0.9", "train.ema.start_step=1"]
EVERYTHING = ["augment.ada={target: -0.9, interval: 2, kimg: 0.2}",
              "loss.topk={gamma: 0.5, min_fraction: 0.25, kimg: 0.02}",
              "penalties=[{kind: lecam, weight: 0.5}, {kind: zcr, weight: 1.0, g_weight: 0.1}, "
              "{kind: bcr, weight_real: 1.0, weight_fake: 0.5}, {kind: r1, weight: 1.0, every: 2}]"]


def _metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _shared(run_dir) -> dict:
    return CheckpointStore(os.path.join(run_dir, "checkpoints"), 5).load_newest(rank=None).shared


def test_p_rises_on_a_d_that_overfits_and_each_move_follows_the_sign_of_rt_minus_target(tmp_path):
    # 32 training images and a fast D: it soon tells every real image apart, r_t -> 1 > target 0.3
    cfg = load_config(None, BASE + ["data.limit=32", "optim.d.lr=2e-3", "train.steps=16", "checkpoint.every=16",
                                    "augment.ada={target: 0.3, interval: 2, kimg: 1.0}"])
    run_training(cfg, str(tmp_path))
    rows = _metrics(tmp_path)
    quantum = 16 * 2 / 1000
    p_prev = 0.0
    for row in rows[1::2]:  # adjustments happen after steps 2, 4, ...
        expected = min(1.0, max(0.0, p_prev + quantum * (1 if row["ada_rt"] > 0.3 else -1)))
        assert row["ada_p"] == pytest.approx(expected), row
        p_prev = row["ada_p"]
    assert rows[-1]["ada_rt"] > 0.3 and rows[-1]["ada_p"] >= 3 * quantum, rows[-1]


def test_p_falls_when_d_is_below_target(tmp_path):
    cfg = load_config(None, BASE + ["train.steps=4", "checkpoint.every=4",
                                    "augment.ada={p: 0.5, target: 0.99, interval: 2, kimg: 1.0}"])
    run_training(cfg, str(tmp_path))
    assert _metrics(tmp_path)[-1]["ada_p"] == pytest.approx(0.5 - 2 * 16 * 2 / 1000)


@pytest.mark.slow
def test_ada_lecam_topk_and_consistency_state_resume_exactly(tmp_path):
    over = BASE + EVERYTHING + ["optim.accumulation=2", "optim.d_steps=2", "checkpoint.keep_last=5"]
    # 3 + 3 steps: the checkpoint at 3 falls inside an ADA interval of 2 (its running sums must be saved too)
    straight = load_config(None, over + ["train.steps=6", "checkpoint.every=3"])
    run_training(straight, str(tmp_path / "straight"))
    run_training(load_config(None, over + ["train.steps=3", "checkpoint.every=3"]), str(tmp_path / "resumed"))
    run_training(straight, str(tmp_path / "resumed"))
    a, b = _shared(tmp_path / "straight"), _shared(tmp_path / "resumed")
    assert a["ada"] == b["ada"] and a["ada"]["p"] > 0
    lecam = a["penalties"][0]
    assert torch.equal(lecam["ema"], b["penalties"][0]["ema"]) and lecam["seen"]
    for net in ("G", "D", "G_ema"):
        for key, value in a[net].items():
            assert torch.equal(value, b[net][key]), f"{net}.{key} differs after resume"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(overrides: list[str], run_dir, nproc: int) -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master-addr",
                "127.0.0.1", "--master-port", str(_free_port())] if nproc > 1 else [sys.executable]
    sets = [arg for o in overrides for arg in ("--set", o)]
    result = subprocess.run([*launcher, "-m", "gandist", "train", "configs/demo_digits.yaml", *sets, "--run-dir",
                             str(run_dir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.slow
def test_two_ddp_ranks_give_the_p_lecam_emas_and_topk_weights_of_one_process(tmp_path):
    # G's conv biases feed a BatchNorm (true gradient 0): eps 1e-3 keeps Adam from amplifying their float noise,
    # as in tests/objectives/test_world_size_invariance.py
    over = BASE + EVERYTHING + ["train.steps=4", "checkpoint.every=4", "optim.g.eps=1e-3",
                                "distributed.cross_replica_bn=true"]
    _train(over, tmp_path / "single", 1)
    _train(over + ["distributed.strategy=ddp"], tmp_path / "ddp", 2)
    a, b = _shared(tmp_path / "single"), _shared(tmp_path / "ddp")
    assert a["ada"]["p"] > 0 and a["ada"] == pytest.approx(b["ada"])
    torch.testing.assert_close(a["penalties"][0]["ema"], b["penalties"][0]["ema"], rtol=1e-4, atol=1e-5)
    run_a, run_b = gandist.load_run(str(tmp_path / "single")), gandist.load_run(str(tmp_path / "ddp"))
    errors = {net: compare_state(getattr(run_a, net).state_dict(), getattr(run_b, net).state_dict())
              for net in ("G", "D", "G_ema")}
    assert all(matches(e) for e in errors.values()), errors
