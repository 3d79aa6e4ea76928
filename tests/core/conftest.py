import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args, check_rc: int | None = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m gandist ARGS` as a user would; assert the exit code when check_rc is given."""
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "gandist", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def repo():
    return REPO
