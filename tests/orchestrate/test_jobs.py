"""Ray Jobs through `gandist submit`: a real head node (127.0.0.1) runs the demo config to SUCCEEDED and writes its
checkpoint; bad configs never reach the cluster; unreachable dashboards fail in seconds."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from gandist.config import ExperimentConfig, load_config
from gandist.orchestrate.jobs import CONFIG_ENV, build_runtime_env, entrypoint

from .conftest import free_port, gandist

# the "ray" group runs in one xdist worker, one test after another: these tests share one Ray cluster (the
# session fixture), and a second Ray on a 2-core machine starves both
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def _job_ids(dashboard: str) -> set[str]:
    from ray.job_submission import JobSubmissionClient

    return {job.submission_id for job in JobSubmissionClient(dashboard).list_jobs()}


def test_runtime_env_carries_the_config_and_the_code():
    cfg = load_config("configs/demo_digits.yaml", ["train.steps=20"])
    env = build_runtime_env(cfg, working_dir=".", pip=None)
    assert ExperimentConfig.model_validate(yaml.safe_load(env["env_vars"][CONFIG_ENV])) == cfg
    assert env["working_dir"] == "." and ".venv" in env["excludes"] and "pip" not in env
    env = build_runtime_env(cfg, working_dir=None, pip=["gandist==0.1.0"])
    assert env["pip"] == ["gandist==0.1.0"] and "working_dir" not in env
    assert entrypoint("/runs/a b", 2, 1.0) == ("python -m gandist.orchestrate.jobs --run-dir '/runs/a b' "
                                               "--workers 2 --gpus-per-worker 1.0")


def test_submitted_demo_follows_to_succeeded_and_leaves_its_checkpoint(ray_cluster, tmp_path):
    run_dir = tmp_path / "demo"
    # two Ray Train workers running DeepSpeed ZeRO-2 (on CPU: gloo + DS_ACCELERATOR=cpu), launched as a Ray job
    proc = gandist("submit", "configs/demo_digits.yaml", "--set", "train.steps=20", "--set", "checkpoint.every=10",
                   "--set", "telemetry.sample_every=0", "--set", "distributed.strategy=zero2", "--workers", "2",
                   "--ray-address", ray_cluster["dashboard"], "--follow", "--timeout", "400", "--run-dir", str(run_dir))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-2000:])
    job_id = proc.stdout.split("submitted ", 1)[1].split()[0]
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id}: SUCCEEDED" in proc.stdout
    assert "Ray Train run finished" in proc.stdout  # the job's own log, streamed by --follow
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000020"
    manifest = json.loads((run_dir / "checkpoints" / "step-00000020" / "manifest.json").read_text())
    assert manifest["step"] == 20
    end = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "end" and end["steps"] == 20
    start = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
    assert (start["world_size"], start["strategy"]) == (2, "zero2")

    status = gandist("jobs", "status", job_id, "--ray-address", ray_cluster["dashboard"], timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "SUCCEEDED"
    logs = gandist("jobs", "logs", job_id, "--ray-address", ray_cluster["dashboard"], timeout=60)
    assert logs.returncode == 0 and "Ray Train run finished" in logs.stdout
    stop = gandist("jobs", "stop", job_id, "--ray-address", ray_cluster["dashboard"], timeout=60)
    assert stop.returncode == 0 and "was not running" in stop.stdout


def test_invalid_config_is_refused_before_submission(ray_cluster):
    before = _job_ids(ray_cluster["dashboard"])
    proc = gandist("submit", "configs/demo_digits.yaml", "--set", "train.stepz=20", "--ray-address",
                   ray_cluster["dashboard"], timeout=60)
    assert proc.returncode == 2
    assert "train.stepz: unknown key (did you mean steps?)" in proc.stderr
    assert _job_ids(ray_cluster["dashboard"]) == before  # nothing reached the cluster


def test_unknown_job_id_is_a_one_line_error(ray_cluster):
    proc = gandist("jobs", "status", "raysubmit_doesnotexist", "--ray-address", ray_cluster["dashboard"], timeout=60)
    assert proc.returncode == 2 and "raysubmit_doesnotexist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unreachable_dashboard_fails_in_seconds():
    started = time.time()
    proc = gandist("submit", "configs/demo_digits.yaml", "--ray-address", f"http://127.0.0.1:{free_port()}",
                   timeout=60)
    assert proc.returncode == 2 and "no Ray dashboard reachable" in proc.stderr
    assert time.time() - started < 30


def test_entrypoint_passes_an_elastic_worker_range_on():
    from gandist.orchestrate.jobs import entrypoint

    assert "--workers 1:3 " in entrypoint("s3://b/run", "1:3", 0) and "--workers 2 " in entrypoint("r", 2, 0)
