"""End to end through `gandist train`: healthy runs stay untouched, injected faults are caught and rolled back."""
import json
import os
import subprocess
import sys

import pytest

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RING8 = "configs/toy_ring8_tiny.yaml"
DIGITS = "configs/demo_digits.yaml"


def ring8_coverage(run_dir) -> dict:
    """Mode coverage of the run's final EMA generator on 2,000 samples (gandist.eval.modes)."""
    code = (
        "import sys, json, torch, gandist\n"
        "from gandist.data.sources import toy2d_centres\n"
        "from gandist.eval.modes import toy2d_coverage\n"
        "run = gandist.load_run(sys.argv[1])\n"
        "torch.manual_seed(0)\n"
        "x = run.sampler(torch.randn(2000, run.sampler.z_dim), None)\n"
        "c, std = toy2d_centres('ring8')\n"
        "print(json.dumps(toy2d_coverage(x, c, std)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_healthy_ring8_run_has_no_false_positives(train):
    res = train(RING8, "train.steps=1500", "checkpoint.every=250", "telemetry.log_every=1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.events("diverged") == [] and res.events("rollback") == []
    verdicts = [m["verdict"] for m in res.metrics()]
    assert len(verdicts) == 1500 and verdicts.count("diverged") == 0
    assert verdicts.count("warn") <= 5  # the odd lone spike at most
    checkpoints = res.events("checkpoint")
    assert len(checkpoints) == 6 and all(c["healthy"] for c in checkpoints)


@pytest.mark.slow
def test_healthy_digits_run_has_no_false_positives(train):
    res = train(DIGITS, "train.steps=400", "checkpoint.every=200", "telemetry.log_every=1",
                "telemetry.sample_every=0", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.events("diverged") == [] and res.events("rollback") == []
    metrics = res.metrics()
    assert [m["verdict"] for m in metrics].count("diverged") == 0
    assert any(k.startswith("D/") for k in metrics[-1]["sigma"])  # SN layers' sigma reach the record
    assert all(c["healthy"] for c in res.events("checkpoint"))


@pytest.mark.slow
def test_lr_spike_is_caught_within_50_steps_rolled_back_and_training_recovers(train):
    res = train(RING8, "train.steps=600", "checkpoint.every=50", "watchdog.inject.kind=lr_spike",
                "watchdog.inject.step=250", "watchdog.inject.factor=100")
    assert res.returncode == 0, res.stderr[-2000:]
    diverged = res.events("diverged")
    rollbacks = res.events("rollback")
    assert len(diverged) == 1 and len(rollbacks) == 1
    assert 250 < diverged[0]["step"] <= 300  # injected before step index 250 ran, i.e. during step 251
    rb = rollbacks[0]
    assert rb["checkpoint_step"] == 250 and rb["reason"] == diverged[0]["reason"]
    assert rb["mitigation"] == {"lr_scale": 0.5, "skip_batches": 0, "reseed": True, "r1_scale": 1.0}
    assert set(rb["signals"]) >= {"loss/D", "loss/G", "grad_norm/D", "grad_norm/G", "step"}
    # after the rollback the run is back in the healthy range: GAN losses near log(4) and mode coverage even
    end = res.events("end")[0]
    assert end["steps"] == 600 and end["rollbacks"] == 1
    assert 0.5 < end["last_losses"]["D"] < 2.0 and 0.3 < end["last_losses"]["G"] < 3.0
    cover = ring8_coverage(res.run_dir)
    assert cover["reverse_kl"] < 0.2  # collapse onto one mode would be log(8) = 2.08


@pytest.mark.slow
def test_injected_nan_rolls_back_at_once(train):
    res = train(RING8, "train.steps=160", "checkpoint.every=50", "watchdog.inject.kind=nan",
                "watchdog.inject.step=120")
    assert res.returncode == 0, res.stderr[-2000:]
    diverged, rollbacks = res.events("diverged"), res.events("rollback")
    assert [d["step"] for d in diverged] == [121]  # the very step that ran on the NaN weight
    assert "non-finite" in diverged[0]["reason"]
    assert rollbacks[0]["checkpoint_step"] == 100
    assert res.events("end")[0]["steps"] == 160
    assert all(m["verdict"] == "ok" for m in res.metrics() if m["step"] == 160)


@pytest.mark.slow
def test_recurring_divergence_gives_up_with_exit_3_and_a_report(train):
    res = train(RING8, "train.steps=300", "checkpoint.every=50", "watchdog.inject.kind=nan",
                "watchdog.inject.step=120", "watchdog.inject.repeat=true", "watchdog.max_rollbacks=2")
    assert res.returncode == 3, res.stderr[-2000:]
    diverged = res.events("diverged")  # three divergences: two rolled back, the third one gives up
    assert len(res.events("rollback")) == 2 and len(diverged) == 3 and diverged[-1]["reason"] == "gave up"
    gave_up = res.events("gave_up")  # the third divergence stops the run instead of rolling back
    assert len(gave_up) == 1 and "Gave up at step 121" in gave_up[0]["report"]
    report = (res.run_dir / "watchdog_report.txt").read_text()
    assert "rollback 1: step 121" in report and "rollback 2: step 121" in report
    assert "Gave up at step 121" in report and "watchdog.max_rollbacks=2" in report
    assert "Gave up at step 121" in res.stderr + res.stdout
    assert (res.run_dir / "checkpoints").is_dir() and (res.run_dir / "config.yaml").is_file()


@pytest.mark.slow
def test_divergence_before_any_healthy_checkpoint_stops_cleanly(train):
    res = train(RING8, "train.steps=100", "checkpoint.every=50", "watchdog.inject.kind=nan",
                "watchdog.inject.step=20")
    assert res.returncode == 3, res.stderr[-2000:]
    assert "no checkpoint is marked healthy" in res.stderr + res.stdout
    assert res.events("rollback") == []
    assert (res.run_dir / "config.yaml").is_file() and (res.run_dir / "events.jsonl").is_file()
