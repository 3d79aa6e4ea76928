"""SIGTERM to one rank of a 2-rank gloo run: the group agrees at a step boundary (the flag rides on the watchdog's
verdict reduction), both ranks save that step's checkpoint and stop with exit 143; a resume (here on one process, a
2 -> 1 resize) starts at that very step, so no step is lost. Without the watchdog the flag has its own all-reduce
every PREEMPT_CHECK_EVERY steps (tests/train/test_preempt.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from distkit import REPO, free_port
from distkit import gandist as run_gandist

pytestmark = pytest.mark.slow

# checkpoint.every=1000: no periodic checkpoint can stand in for the preemption's own
TOY = ["configs/toy_ring8_tiny.yaml", "--set", "train.steps=100000", "--set", "checkpoint.every=1000",
       "--set", "telemetry.progress=false", "--set", "telemetry.log_every=1", "--set", "distributed.strategy=ddp"]


def _lines(path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:  # being written
            pass
    return out


def _rank_process(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for proc in launcher.children(recursive=True):
        try:
            if proc.environ().get("RANK") == str(rank) and "gandist" in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            pass
    return None


def test_sigterm_to_one_rank_saves_the_stop_step_and_the_resume_loses_no_step(tmp_path):
    run = tmp_path / "run"
    argv = [*TOY, "--run-dir", str(run)]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "gandist", "train", *argv]
    log = open(tmp_path / "torchrun.log", "w")
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not [m for m in _lines(run / "metrics.jsonl") if m["step"] >= 3]:
            assert launcher.poll() is None and time.time() < deadline, (tmp_path / "torchrun.log").read_text()[-3000:]
            time.sleep(0.05)
        victim = _rank_process(psutil.Process(launcher.pid), 1)
        assert victim is not None
        victim.send_signal(signal.SIGTERM)  # rank 1 only: rank 0 learns it through the collective
        signalled_at = max(m["step"] for m in _lines(run / "metrics.jsonl"))
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        log.close()
    text = (tmp_path / "torchrun.log").read_text()
    assert "preempted (SIGTERM) at step" in text and "exitcode  : 143" in text, text[-3000:]
    stops = [e for e in _lines(run / "events.jsonl") if e["event"] == "preempted"]
    assert len(stops) == 1, stops
    stop = stops[0]["step"]
    trained = max(m["step"] for m in _lines(run / "metrics.jsonl"))
    assert trained == stop  # the last step trained is the one saved
    # agreed at the next step boundary: the flag rides on the watchdog's verdict reduction, every step
    assert signalled_at <= stop <= signalled_at + 2, (signalled_at, stop)
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{stop:08d}"
    manifest = json.loads((run / "checkpoints" / f"step-{stop:08d}" / "manifest.json").read_text())
    assert manifest["world_size"] == 2

    # resume on one process to 3 more steps: it starts at the stop step (a resize 2 -> 1) and trains on from there
    result = run_gandist(["train", *argv, "--set", f"train.steps={stop + 3}", "--set", "distributed.strategy=single"])
    assert result.returncode == 0, result.stderr[-3000:]
    events = _lines(run / "events.jsonl")
    start = [e for e in events if e["event"] == "start"][-1]
    assert start["resumed_from"] == stop and start["world_size"] == 1
    assert [e for e in events if e["event"] == "resize"][-1]["from"] == 2
    after = [m["step"] for m in _lines(run / "metrics.jsonl")][-3:]
    assert after == [stop + 1, stop + 2, stop + 3]
