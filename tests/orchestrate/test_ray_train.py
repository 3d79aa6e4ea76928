"""`gandist train --ray` on a real local Ray cluster: 2 workers survive a SIGKILLed worker (Ray restarts the group,
gandist resumes from its last checkpoint) and a killed driver (the same command resumes the run), finishing at the
configured step; bad requests fail fast with a clear message."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import gandist

# the "ray" group runs in one xdist worker, one test after another: these tests share one Ray cluster (the
# session fixture), and a second Ray on a 2-core machine starves both
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

# 80 steps of batch 512: long enough (several seconds) that the kill lands mid-run even on a fast machine
TINY = ["configs/toy_ring8_tiny.yaml", "--set", "train.steps=80", "--set", "train.batch_size=512",
        "--set", "checkpoint.every=10",
        "--set", "checkpoint.keep_last=2", "--set", "distributed.strategy=ddp", "--set", "telemetry.log_every=1",
        "--set", "telemetry.progress=false"]


def _events(run_dir) -> list[dict]:
    path = run_dir / "events.jsonl"
    events = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            events.append(json.loads(line))
        except ValueError:  # a line being written right now
            pass
    return events


def _starts(run_dir) -> list[dict]:
    return [e for e in _events(run_dir) if e["event"] == "start"]


def _checkpoints(run_dir) -> list[int]:
    return [e["step"] for e in _events(run_dir) if e["event"] == "checkpoint"]


def _latest_checkpoint(run_dir) -> int:
    """The step of checkpoints/latest: what a resume starts from."""
    return int((run_dir / "checkpoints" / "latest").read_text().strip().rsplit("-", 1)[1])


def _metric_steps(run_dir) -> list[int]:
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # a line being written right now
            pass
    return steps


def _train_workers(head_pid: int) -> list[psutil.Process]:
    """The Ray Train worker processes of our cluster (descendants of its `ray start` process)."""
    found = []
    for proc in psutil.Process(head_pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _wait_for(condition, process, what: str, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_run_survives_a_killed_worker_then_a_killed_driver_redoing_at_most_one_interval(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", *TINY, "--run-dir", str(run_dir), "--ray", "--address", ray_cluster["address"], "--workers", "2"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([str(Path(sys.executable).parent / "gandist"), *args], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        # 1. SIGKILL one Ray Train worker once checkpoint 20 exists: Ray restarts the group (FailureConfig)
        _wait_for(lambda: _checkpoints(run_dir) and _checkpoints(run_dir)[-1] >= 20
                  and len(_train_workers(ray_cluster["pid"])) == 2, driver, "checkpoint 20")
        victim = _train_workers(ray_cluster["pid"])[-1]
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(1.0)  # the survivor blocks in its next collective; let its last metrics line land
        reached = max(_metric_steps(run_dir))
        _wait_for(lambda: len(_starts(run_dir)) == 2, driver, "Ray's restart of the worker group")
        resumed = _starts(run_dir)[1]["resumed_from"]
        assert resumed is not None and resumed >= 20 and resumed % 10 == 0
        assert 0 <= reached - resumed <= 10, (reached, resumed)  # steps redone: at most the checkpoint interval

        # 2. SIGKILL the driver after the next checkpoint: Ray tears down the controller and workers it owns
        _wait_for(lambda: _checkpoints(run_dir)[-1] >= resumed + 10, driver, "a checkpoint after the restart")
        driver.kill()
        driver.wait()
        deadline = time.time() + 120
        while _train_workers(ray_cluster["pid"]) and time.time() < deadline:
            time.sleep(0.5)
        assert not _train_workers(ray_cluster["pid"]), "Ray did not stop the dead driver's workers within 120 s"
        # Ray notices the dead driver only after a moment: its workers may finish one more checkpoint meanwhile, and
        # may die between writing it (and its `latest` pointer) and logging its event, so the pointer is the truth
        last_checkpoint = _latest_checkpoint(run_dir)
        assert last_checkpoint >= _checkpoints(run_dir)[-1]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    assert not [e for e in _events(run_dir) if e["event"] == "end"], "the run finished before the driver was killed"

    # 3. the same command again (same RunConfig(storage_path, name)) resumes and finishes
    proc = gandist(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    starts = _starts(run_dir)
    assert len(starts) == 3 and starts[0]["resumed_from"] is None and all(s["world_size"] == 2 for s in starts)
    assert starts[2]["resumed_from"] == last_checkpoint
    print(f"worker killed at step {reached}, group resumed from {resumed}; driver killed after checkpoint "
          f"{last_checkpoint}, re-run resumed from {starts[2]['resumed_from']}")
    assert _metric_steps(run_dir)[-1] == 80
    assert [e["steps"] for e in _events(run_dir) if e["event"] == "end"] == [80]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000080"
    # Ray holds small pointers to gandist's checkpoints, each of which still exists (retention prunes only
    # gandist's own step folders, so Ray's snapshot never names a deleted folder)
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    names = [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]
    assert "ray-step-00000080" in names and not list(run_dir.glob("checkpoint_0*"))
    for name in names:
        pointer = json.loads((run_dir / name / "gandist_checkpoint.json").read_text())
        assert pointer["url"].endswith(f"step-{pointer['step']:08d}")


def test_more_gpus_than_the_cluster_has_reports_pending_and_stops(ray_cluster, tmp_path):
    started = time.time()
    proc = gandist("train", *TINY, "--run-dir", str(tmp_path / "run"), "--ray", "--address", ray_cluster["address"],
                   "--workers", "2", "--gpus-per-worker", "1", env={"GANDIST_RAY_PENDING_TIMEOUT": "5"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "PENDING" in proc.stderr and "'GPU': 1.0" in proc.stderr and "--gpus-per-worker" in proc.stderr
    assert time.time() - started < 120


def test_unreachable_ray_address_fails_in_seconds(tmp_path):
    from .conftest import free_port

    started = time.time()
    proc = gandist("train", *TINY, "--run-dir", str(tmp_path / "run"), "--ray", "--address",
                   f"127.0.0.1:{free_port()}", "--workers", "2", timeout=60)
    assert proc.returncode == 2
    assert "no Ray cluster reachable" in proc.stderr
    assert time.time() - started < 30  # CLI start-up included; the connection check itself gives up after 5 s
