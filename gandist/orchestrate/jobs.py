"""Ray Jobs: submit an experiment to a running Ray cluster through its dashboard (Job Submission SDK), follow it.

The job's runtime_env carries the resolved config (env var GANDIST_CONFIG_YAML, validated here before anything is
sent) and the code: either `working_dir` (this checkout, uploaded by Ray) or a `pip` spec (e.g. a wheel URL or
`gandist==0.1.0`) when the cluster image does not already have gandist. The job runs this module as its entry
point, which trains with Ray Train on the cluster the job belongs to.

    python -m gandist.orchestrate.jobs --run-dir DIR --workers N --gpus-per-worker G   (the job's entry point)
"""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from gandist.errors import UserError
from gandist.config import ExperimentConfig

CONFIG_ENV = "GANDIST_CONFIG_YAML"
AGENT_WAIT_S = 180.0  # how long a fresh cluster (or a loaded head) may take to register or answer its job agent
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# what the working_dir upload leaves out: environments, runs, caches (Ray's limit for working_dir is 500 MiB)
WORKING_DIR_EXCLUDES = [".venv", ".git", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache", "*.pt", "*.tar"]


def check_dashboard(address: str, timeout: float = 5.0) -> str:
    """Normalise a dashboard URL and fail in seconds when nothing listens there (the SDK itself may hang)."""
    url = address if "://" in address else f"http://{address}"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--ray-address {address}: expected the dashboard URL, e.g. http://127.0.0.1:8265")
    port = parsed.port or (443 if parsed.scheme == "https" else 8265)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"--ray-address {address}: no Ray dashboard reachable at {parsed.hostname}:{port} ({err}); "
                        "start the cluster with `ray start --head --dashboard-host 127.0.0.1` or fix the URL") from None
    return f"{parsed.scheme}://{parsed.hostname}:{port}"


def project_root() -> Path | None:
    """The source checkout gandist is imported from (holds pyproject.toml), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "gandist").is_dir() else None


def build_runtime_env(cfg: ExperimentConfig, *, working_dir: str | None, pip: list[str] | None,
                      extra_env: dict[str, str] | None = None) -> dict:
    """runtime_env for the job: the config in an env var, plus the code as working_dir or a pip spec."""
    env = {CONFIG_ENV: cfg.to_yaml(), **(extra_env or {})}
    runtime_env: dict = {"env_vars": env}
    if working_dir:
        if not Path(working_dir).is_dir():
            raise UserError(f"--working-dir {working_dir}: not a folder; give the gandist checkout to upload")
        runtime_env["working_dir"] = str(working_dir)
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env


def entrypoint(run_dir: str, workers, gpus_per_worker: float, force: bool = False) -> str:
    """The shell command Ray runs for the job (on the head node, in the runtime_env)."""
    from gandist.orchestrate.ray_train import parse_workers, workers_text

    args = ["python", "-m", "gandist.orchestrate.jobs", "--run-dir", run_dir,
            "--workers", workers_text(parse_workers(workers)),
            "--gpus-per-worker", str(gpus_per_worker)]
    return shlex.join(args + (["--force"] if force else []))


def client(address: str):
    """A JobSubmissionClient for a dashboard URL, after a quick reachability check."""
    from ray.job_submission import JobSubmissionClient

    url = check_dashboard(address)
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError) as err:
        raise UserError(f"--ray-address {address}: the Ray Jobs API did not answer ({err})") from None


def submit(cfg: ExperimentConfig, address: str, *, run_dir: str, workers="1", gpus_per_worker: float = 0,
           working_dir: str | None = None, pip: list[str] | None = None, force: bool = False) -> str:
    """Submit one training job; returns its submission id."""
    from gandist.orchestrate.ray_train import check_worker_request

    check_worker_request(cfg, workers, gpus_per_worker)  # refused here, not minutes later on the cluster
    runtime_env = build_runtime_env(cfg, working_dir=working_dir, pip=pip)
    jobs = client(address)
    # the id is chosen here so that a retry after an ambiguous answer cannot start the job twice: the head answers
    # "No available agent" both while a fresh cluster's agent registers and when a busy agent was slow to confirm
    # a submission it did accept; a retry of the latter is refused as "already exists", which means it is running
    submission_id = f"raysubmit_{uuid.uuid4().hex[:16]}"
    deadline = time.time() + AGENT_WAIT_S
    while True:
        try:
            return jobs.submit_job(entrypoint=entrypoint(run_dir, workers, gpus_per_worker, force),
                                   runtime_env=runtime_env, submission_id=submission_id,
                                   metadata={"gandist.name": cfg.name, "gandist.run_dir": run_dir})
        except RuntimeError as err:
            if "already exists" in str(err) and submission_id in str(err):
                return submission_id
            if "No available agent" in str(err) and time.time() < deadline:
                time.sleep(2.0)
                continue
            raise UserError(f"--ray-address {address}: the job was not accepted "
                            f"({str(err).strip().splitlines()[-1]})") from None


def follow(address: str, job_id: str, *, timeout_s: float | None = None, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status (SUCCEEDED, FAILED or STOPPED)."""
    jobs = client(address)
    printed = 0
    deadline = time.time() + timeout_s if timeout_s else None
    while True:
        status = str(jobs.get_job_status(job_id).value)
        logs = jobs.get_job_logs(job_id)  # polled, not tailed: tail_job_logs needs a websocket and async code
        out.write(logs[printed:])
        out.flush()
        printed = len(logs)
        if status in TERMINAL:
            return status
        if deadline and time.time() > deadline:
            raise UserError(f"job {job_id} is still {status} after {timeout_s:.0f}s; "
                            f"stop it with `gandist jobs stop {job_id} --ray-address {address}`")
        time.sleep(1.0)


def _ask(address: str, job_id: str, what: str):
    """Call one JobSubmissionClient method; an unknown job id becomes a one-line user error."""
    try:
        return getattr(client(address), what)(job_id)
    except RuntimeError as err:  # the SDK raises RuntimeError with the HTTP status for unknown ids
        raise UserError(f"job {job_id} at {address}: {str(err).splitlines()[0]} (list jobs with "
                        f"`ray job list --address {address}`)") from None


def status(address: str, job_id: str) -> dict:
    """The job's status, message and timing as a plain dict."""
    info = _ask(address, job_id, "get_job_info")
    return {"job_id": job_id, "status": str(info.status.value), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time,
            "metadata": info.metadata}


def logs(address: str, job_id: str) -> str:
    """All logs the job's driver wrote so far."""
    return _ask(address, job_id, "get_job_logs")


def stop(address: str, job_id: str) -> bool:
    """Ask Ray to stop the job; True when it was running."""
    return _ask(address, job_id, "stop_job")


def _job_main(argv: list[str] | None = None) -> int:
    """The job's entry point: read the config from the runtime_env and train with Ray Train on this cluster."""
    import yaml

    from gandist.config import config_from_dict
    from gandist.orchestrate.ray_train import train_with_ray

    parser = argparse.ArgumentParser(prog="python -m gandist.orchestrate.jobs")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--workers", default="1")  # N or MIN:MAX
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    text = os.environ.get(CONFIG_ENV)
    if not text:
        print(f"gandist: error: {CONFIG_ENV} is not set; submit with `gandist submit CONFIG --ray-address URL`",
              file=sys.stderr)
        return 2
    run_dir = os.path.expanduser(args.run_dir)
    try:
        cfg = config_from_dict(yaml.safe_load(text), CONFIG_ENV)
        return train_with_ray(cfg, run_dir, address=None, workers=args.workers,
                              gpus_per_worker=args.gpus_per_worker, force=args.force)
    except UserError as err:  # ConfigError included; WatchdogGaveUp exits 3, as under `gandist train`
        print(f"gandist: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(_job_main())
