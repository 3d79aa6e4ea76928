"""SIGTERM to one Ray Train worker of a 2-worker ddp run on a real local Ray cluster: the worker catches it (its
handler sits on the actor's main thread, the loop runs in another thread), the group agrees at a step boundary,
both workers save that step's checkpoint and stop, Ray restarts the group, and the restart resumes at that very step:
no step lost, and the final weights equal one process trained for the same steps."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from closekit import compare_state, matches
from .conftest import VENV_BIN
from .test_ray_train import _events, _starts, _train_workers

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

# checkpoint.every beyond train.steps: only the preemption's own save (and the final one) can make a checkpoint;
# lr 1e-4 keeps a 2-rank run within round-off of one process (tests/orchestrate/test_elastic_multinode.py)
STEPS = 100
TOY = ["configs/toy_ring8_tiny.yaml", "--set", f"train.steps={STEPS}", "--set", "checkpoint.every=100000",
       "--set", "optim.g.lr=1e-4", "--set", "optim.d.lr=1e-4", "--set", "telemetry.log_every=1",
       "--set", "telemetry.progress=false"]


def _metric_steps(run_dir) -> list[int]:
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # a line being written right now
            pass
    return steps


def test_sigterm_to_one_ray_worker_saves_the_agreed_step_and_the_restart_resumes_it(ray_cluster, tmp_path):
    started = time.time()
    run = tmp_path / "run"
    # RAY_ADDRESS: Ray's own helpers (its placement-group cleaner) find this cluster when others run on the machine
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
           "RAY_ADDRESS": ray_cluster["address"],
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}  # Ray's poll of the workers (default 2 s) sees the stop sooner
    argv = [str(VENV_BIN / "gandist"), "train", *TOY, "--set", "distributed.strategy=ddp", "--set",
            "distributed.max_failures=1", "--run-dir", str(run), "--ray", "--address", ray_cluster["address"],
            "--workers", "2"]
    log_path = tmp_path / "driver.log"
    log = open(log_path, "w")
    driver = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    procs = [driver]
    try:
        deadline = time.time() + 120
        while not (_metric_steps(run) and _metric_steps(run)[-1] >= 5 and len(_train_workers(ray_cluster["pid"])) == 2):
            assert driver.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.02)
        victim = _train_workers(ray_cluster["pid"])[-1]
        victim.send_signal(signal.SIGTERM)  # one worker only: the other learns it through the collective
        signalled_at = _metric_steps(run)[-1]
        # the reference: one process, the same steps, trained while Ray restarts the group (the test's wall time)
        single = subprocess.Popen([str(VENV_BIN / "gandist"), "train", *TOY, "--run-dir", str(tmp_path / "single")],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(single)
        driver.wait(timeout=120)
        single_err = single.communicate(timeout=120)[1]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        log.close()
    assert driver.returncode == 0, log_path.read_text()[-4000:]
    events = _events(run)
    stops = [e for e in events if e["event"] == "preempted"]
    assert len(stops) == 1, stops
    stop = stops[0]["step"]
    assert signalled_at <= stop < STEPS, (signalled_at, stop)
    # the victim lived on after its SIGTERM until the group had saved that step together (with Ray's own handler
    # it exits at once, its peer fails in the next collective, and no `preempted` event is written)
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [stop, STEPS]
    manifest = json.loads((run / "checkpoints" / f"step-{stop:08d}" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    starts = _starts(run)
    assert [(s["resumed_from"], s["world_size"]) for s in starts] == [(None, 2), (stop, 2)], starts
    steps = _metric_steps(run)
    assert steps == list(range(1, STEPS + 1)), "a step was lost or trained twice"
    assert [e["steps"] for e in events if e["event"] == "end"] == [STEPS]
    t = {e["event"] + str(i): round(e["time"] - started, 1) for i, e in enumerate(events)}

    assert single.returncode == 0, single_err[-3000:]
    import gandist

    a, b = gandist.load_run(str(run), checkpoint=STEPS), gandist.load_run(str(tmp_path / "single"), checkpoint=STEPS)
    reports = {net: compare_state(getattr(a, net).state_dict(), getattr(b, net).state_dict())
               for net in ("G", "D", "G_ema")}
    print(f"SIGTERM after step {signalled_at}, preempted at {stop}, resumed from {starts[1]['resumed_from']}; "
          f"whole test {time.time() - started:.1f}s; events at {t}; {reports}")
    for net, report in reports.items():
        assert matches(report), (net, report)


DRAIN_ENV = "GANDIST_TEST_RAY_DRAIN"  # opt-in: its own 2-node cluster takes longer than CI's budget for one test


@pytest.mark.skipif(os.environ.get(DRAIN_ENV) != "1", reason=f"CI time: its own 2-node Ray cluster; set {DRAIN_ENV}=1")
def test_ray_s_drain_notice_for_a_worker_s_node_saves_the_agreed_step_and_the_smaller_group_resumes_it(tmp_path):
    """`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` (the drain Ray's autoscaler sends for a spot reclaim)
    on the node of one of 2 workers: Ray Train's notice reaches the workers, the group stops at one step with that
    step saved, and the restarted group (1 worker: the drained node takes no new work) resumes at it."""
    from .test_elastic_multinode import Cluster

    steps = 1000  # the notice takes up to a poll interval (0.5 s) and a round trip to arrive: outlast it
    toy = [*TOY, "--set", f"train.steps={steps}"]
    started = time.time()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
           "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15",
           "GANDIST_RAY_RESIZE_INTERVAL": "600"}
    cluster = Cluster(tmp_path, env)
    env["RAY_ADDRESS"] = address = f"127.0.0.1:{cluster.gcs}"
    run, log_path = tmp_path / "run", tmp_path / "driver.log"
    procs = []
    try:
        cluster.start("head", head=True)
        deadline = time.time() + 120
        while not cluster.started("head"):
            assert time.time() < deadline, "the head node did not start"
            time.sleep(0.2)
        second = cluster.start("second")
        while not cluster.started("second"):
            assert time.time() < deadline, "the second node did not start"
            time.sleep(0.2)
        node_id = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(); print([n['NodeID'] for n in ray.nodes() if n['Alive'] "
             "and 'gandist_second' in n['Resources']][0])"], env=env, capture_output=True, text=True,
            timeout=60).stdout.strip().splitlines()[-1]
        argv = [str(VENV_BIN / "gandist"), "train", *toy, "--set", "distributed.strategy=ddp", "--set",
                "distributed.max_failures=3", "--run-dir", str(run), "--ray", "--address", address, "--workers", "1:2"]
        log = open(log_path, "w")
        driver = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        procs.append(driver)
        while not (_metric_steps(run) and _metric_steps(run)[-1] >= 5):
            assert driver.poll() is None and time.time() < deadline + 120, log_path.read_text()[-3000:]
            time.sleep(0.05)
        assert [cluster.workers_on(node) for node in cluster.nodes] == [1, 1]
        drained_at = _metric_steps(run)[-1]
        drain = subprocess.run([str(VENV_BIN / "ray"), "drain-node", "--address", address, "--node-id", node_id,
                                "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (test)",
                                "--deadline-remaining-seconds", "120"], env=env, capture_output=True, text=True,
                               timeout=60)
        assert drain.returncode == 0, drain.stderr[-2000:]
        single = subprocess.Popen([str(VENV_BIN / "gandist"), "train", *toy, "--run-dir", str(tmp_path / "single")],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(single)
        driver.wait(timeout=240)
        single_err = single.communicate(timeout=120)[1]
        log.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        cluster.stop()
    assert driver.returncode == 0, log_path.read_text()[-4000:]
    events = _events(run)
    stops = [e for e in events if e["event"] == "preempted"]
    assert len(stops) == 1 and "Ray Train preemption notice" in stops[0]["signal"], stops
    stop = stops[0]["step"]
    assert drained_at <= stop < steps
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [stop, steps]
    starts = _starts(run)
    assert [(s["resumed_from"], s["world_size"]) for s in starts] == [(None, 2), (stop, 1)], starts
    assert _metric_steps(run) == list(range(1, steps + 1)), "a step was lost or trained twice"
    assert single.returncode == 0, single_err[-3000:]
    import gandist

    a, b = gandist.load_run(str(run), checkpoint=steps), gandist.load_run(str(tmp_path / "single"), checkpoint=steps)
    reports = {net: compare_state(getattr(a, net).state_dict(), getattr(b, net).state_dict())
               for net in ("G", "D", "G_ema")}
    t = {e["event"] + str(i): round(e["time"] - started, 1) for i, e in enumerate(events)}
    print(f"drained after step {drained_at}, preempted at {stop} ({stops[0]['signal']}), resumed from "
          f"{starts[1]['resumed_from']} on {starts[1]['world_size']}; whole test {time.time() - started:.1f}s; "
          f"events at {t}; {reports}")
    for net, report in reports.items():
        assert matches(report), (net, report)
