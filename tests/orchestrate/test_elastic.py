"""Elastic `gandist train --ray --workers 1:2` on a real two-node Ray cluster on 127.0.0.1.

A head node and a second node (`ray start --address`), 1 CPU each, so that Ray places one worker on each node.
SIGKILL of the second node's raylet: Ray Train V2 restarts the group with 1 worker, which resumes the newest
checkpoint (a `resize` event 2 -> 1); a new second node: the group grows back (1 -> 2). The final weights equal a
single-process run of the same steps on the same global batch (tests/closeness.py), and no step is trained twice
beyond one checkpoint interval. The run dir is a local folder both nodes see (one machine).
"""
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

import gandist
from closeness import MODEL_RTOL, compare_state

from .conftest import VENV_BIN, _listening, free_port, gandist as run_gandist
from .test_ray_train import _events, _metric_steps, _starts

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

STEPS, EVERY = 120, 10
TINY = ["configs/toy_ring8_tiny.yaml", "--set", f"train.steps={STEPS}", "--set", "train.batch_size=512",
        "--set", f"checkpoint.every={EVERY}", "--set", "checkpoint.keep_last=20", "--set", "telemetry.log_every=1",
        "--set", "telemetry.progress=false"]
# Ray notices a dead node after health_check_period x failure_threshold; the defaults (~15 s) would dominate
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu",
           "PYTHONUNBUFFERED": "1", "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _agent_ports() -> list[str]:
    # fixed default ports would collide with the other Ray clusters on the machine (and with the other node)
    return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())]


class Cluster:
    """A head and worker nodes started with --block in their own sessions; close() stops exactly those."""

    def __init__(self, root: Path):
        self.root, self.nodes, self.logs = root, [], []
        self.gcs = free_port()
        self.temp_dir = f"/tmp/gdel-{os.getpid()}"
        self._start("head", ["--head", "--port", str(self.gcs), "--dashboard-port", str(free_port()),
                             "--dashboard-host", "127.0.0.1",
                             "--temp-dir", self.temp_dir, "--ray-client-server-port", str(free_port())])
        deadline = time.time() + 120
        # the GCS port opens before the head's raylet has registered; a node joining earlier fails
        while not (_listening(self.gcs) and "Ray runtime started" in (root / "head.log").read_text()):
            assert self.nodes[0].poll() is None and time.time() < deadline, self.log_tail("head")
            time.sleep(0.5)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        cmd = [str(VENV_BIN / "ray"), "start", "--block", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--num-gpus", "0", "--disable-usage-stats", "--labels", json.dumps({"gandist-node": name}),
               *_agent_ports()]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV},
                                start_new_session=True)
        self.nodes.append(proc)
        self.logs.append(log)
        return proc

    def add_node(self, name: str, timeout: float = 120) -> subprocess.Popen:
        """Start a node and wait until it has joined (an elastic group started earlier would start smaller)."""
        proc = self._start(name, ["--address", f"127.0.0.1:{self.gcs}"])
        deadline = time.time() + timeout
        while "Ray runtime started" not in (self.root / f"{name}.log").read_text():
            assert proc.poll() is None and time.time() < deadline, self.log_tail(name)
            time.sleep(0.5)
        return proc

    def log_tail(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()[-2000:]

    def close(self) -> None:
        for proc in reversed(self.nodes):
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
            except ProcessLookupError:
                continue
        for proc in reversed(self.nodes):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything left of that node's session
            except ProcessLookupError:
                pass
        for log in self.logs:
            log.close()


def _descendants(pid: int, marker: str) -> list[psutil.Process]:
    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return found
    for proc in children:
        try:
            if marker in " ".join(proc.cmdline()) or proc.name() == marker:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _wait_for(condition, driver, what: str, timeout: float) -> float:
    deadline = time.time() + timeout
    while not condition():
        assert driver.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.time()


@pytest.fixture
def two_nodes(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.add_node("b")
        yield cluster
    finally:
        cluster.close()


def test_group_shrinks_on_node_loss_grows_back_and_matches_single(two_nodes, tmp_path):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "driver.log", "w")
    # Ray Train's first restart may still ask for 2 workers (the node is not declared dead yet); its default 60 s
    # wait for a worker group that cannot start would dominate the resize
    env = {**os.environ, **RAY_ENV, "GANDIST_RAY_RESIZE_INTERVAL": "2", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}
    driver = subprocess.Popen([str(VENV_BIN / "gandist"), "train", *TINY, "--set", "distributed.strategy=ddp",
                               "--run-dir", str(run_dir), "--ray", "--address", f"127.0.0.1:{two_nodes.gcs}",
                               "--workers", "1:2"], env=env, stdout=log, stderr=subprocess.STDOUT)
    node_b = two_nodes.nodes[1]
    try:
        # (a) one worker on each node, then SIGKILL node b's raylet after checkpoint 20
        _wait_for(lambda: _starts(run_dir) and _starts(run_dir)[0]["world_size"] == 2
                  and max([0] + [e["step"] for e in _events(run_dir) if e["event"] == "checkpoint"]) >= 20,
                  driver, "checkpoint 20 on two workers", 150)
        assert len(_descendants(node_b.pid, "RayTrainWorker")) == 1  # spread, not packed
        raylet = _descendants(node_b.pid, "raylet")[0]
        os.kill(raylet.pid, signal.SIGKILL)
        lost = time.time()
        time.sleep(0.5)
        reached = max(_metric_steps(run_dir))
        _wait_for(lambda: len(_starts(run_dir)) >= 2, driver, "the restart on one worker", 90)
        shrink = _starts(run_dir)[1]
        assert shrink["world_size"] == 1
        first = _wait_for(lambda: max(_metric_steps(run_dir)) > shrink["resumed_from"], driver,
                          "the first step after the node loss", 60)
        assert 0 <= reached - shrink["resumed_from"] <= EVERY, (reached, shrink)
        os.killpg(node_b.pid, signal.SIGKILL)  # what is left of node b (its `ray start`, agents, workers)
        node_b.wait()

        # (b) a node comes back: the group grows back to 2 at the next resize check
        returned = time.time()
        two_nodes.add_node("c")
        _wait_for(lambda: len(_starts(run_dir)) >= 3, driver, "the group growing back", 120)
        grow = _starts(run_dir)[2]
        assert grow["world_size"] == 2
        grown = time.time()
        rc = driver.wait(timeout=150)
        assert rc == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    resizes = [(e["from"], e["to"], e["step"]) for e in _events(run_dir) if e["event"] == "resize"]
    assert resizes == [(2, 1, shrink["resumed_from"]), (1, 2, grow["resumed_from"])]
    assert [e["steps"] for e in _events(run_dir) if e["event"] == "end"] == [STEPS]
    # (d) steps trained twice: only those after the checkpoint resumed from, at most one interval per resize
    steps = _metric_steps(run_dir)
    assert sorted(set(steps)) == list(range(1, STEPS + 1))
    assert len(steps) - STEPS <= 2 * EVERY, len(steps) - STEPS
    print(f"node lost at step {reached}: first step after it {first - lost:.1f}s later (resumed from "
          f"{shrink['resumed_from']}); node back -> 2 workers after {grown - returned:.1f}s "
          f"(resumed from {grow['resumed_from']}); steps redone {len(steps) - STEPS}")

    # (c) the same steps on one process with the same global batch give the same weights
    single = tmp_path / "single"
    proc = run_gandist("train", *TINY, "--set", "distributed.strategy=single", "--run-dir", str(single))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = gandist.load_run(str(run_dir), checkpoint=STEPS), gandist.load_run(str(single), checkpoint=STEPS)
    for net in ("G", "D", "G_ema"):
        report = compare_state(getattr(a, net).state_dict(), getattr(b, net).state_dict())
        print(net, report)
        assert report["excess"] <= 1 and report["model_relative"] < MODEL_RTOL, (net, report)
