"""Helpers of the watchdog's end-to-end tests: run `gandist train` as a user would and read its run dir."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class TrainResult:
    """Exit code, output and run dir of one `gandist train` run."""

    returncode: int
    stdout: str
    stderr: str
    run_dir: Path

    def events(self, kind: str | None = None) -> list[dict]:
        """events.jsonl lines, optionally only those with "event" == kind."""
        path = self.run_dir / "events.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        return [e for e in lines if kind is None or e["event"] == kind]

    def metrics(self) -> list[dict]:
        """metrics.jsonl lines."""
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def quiet_env() -> dict:
    # One thread per process: on a shared 2-core machine torch's thread pool spins against other jobs.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
            "PYTHONPATH": str(REPO)}


@pytest.fixture
def train(tmp_path):
    """train(config, *sets, timeout=...) -> TrainResult of `python -m gandist train`."""

    def run(config: str, *sets: str, timeout: int = 300, launcher: list[str] | None = None) -> TrainResult:
        run_dir = tmp_path / "run"
        cmd = [*(launcher or [sys.executable]), "-m", "gandist", "train", str(REPO / config), "--run-dir", str(run_dir),
               "--set", "telemetry.progress=false"]
        for s in sets:
            cmd += ["--set", s]
        proc = subprocess.run(cmd, cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=timeout)
        return TrainResult(proc.returncode, proc.stdout, proc.stderr, run_dir)

    return run
