"""`gandist train --ray` on a real local Ray cluster: 2 workers finish, survive a SIGKILLed worker by resuming
from gandist's last checkpoint, and bad requests fail fast with a clear message."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest

from .conftest import gandist

pytestmark = pytest.mark.slow

# 80 steps of batch 512: long enough (several seconds) that the kill lands mid-run even on a fast machine
TINY = ["configs/toy_ring8_tiny.yaml", "--set", "train.steps=80", "--set", "train.batch_size=512",
        "--set", "checkpoint.every=10",
        "--set", "checkpoint.keep_last=2", "--set", "distributed.strategy=ddp", "--set", "telemetry.log_every=1",
        "--set", "telemetry.progress=false"]


def _events(run_dir) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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


def test_two_workers_survive_a_sigkilled_worker_and_redo_at_most_one_interval(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    killed: list[int] = []
    reached: list[int] = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 400
        while time.time() < deadline:
            if any(e["event"] == "checkpoint" and e["step"] >= 20 for e in _events(run_dir)):
                workers = _train_workers(ray_cluster["pid"])
                if len(workers) == 2:
                    os.kill(workers[-1].pid, signal.SIGKILL)
                    killed.append(workers[-1].pid)
                    time.sleep(1.0)  # the survivor blocks in its next collective; let its last line land
                    reached.append(max(_metric_steps(run_dir)))
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    proc = gandist("train", *TINY, "--run-dir", str(run_dir), "--ray", "--address", ray_cluster["address"],
                   "--workers", "2")
    killer.join(timeout=5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert killed, "no Ray Train worker was killed (none found, or the run finished before checkpoint 20 was seen)"

    events = _events(run_dir)
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2, starts  # the first attempt and Ray's restart of the group
    assert starts[0]["resumed_from"] is None and all(s["world_size"] == 2 for s in starts)
    resumed = starts[1]["resumed_from"]
    assert resumed is not None and resumed >= 20 and resumed % 10 == 0
    # steps trained before the kill (metrics.jsonl has a line per step) minus the step resumed from = steps redone
    assert 0 <= reached[0] - resumed <= 10, (reached, resumed)
    assert _metric_steps(run_dir)[-1] == 80
    end = [e for e in events if e["event"] == "end"]
    assert len(end) == 1 and end[0]["steps"] == 80
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000080"
    # Ray registered gandist's own checkpoints where they are (nothing copied): its snapshot names them
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    names = [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]
    assert "checkpoints/step-00000080" in names and not list(run_dir.glob("checkpoint_0*"))


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
