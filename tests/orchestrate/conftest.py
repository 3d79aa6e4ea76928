"""One real local Ray cluster (`ray start --head`, 127.0.0.1, 4 CPUs) shared by every Ray test of this folder.

Started with --block in its own session so that teardown stops exactly the processes it started (a blanket
`ray stop` would also stop other people's Ray clusters on the same machine).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """{'address': '127.0.0.1:GCS_PORT', 'dashboard': 'http://127.0.0.1:PORT', 'pid': head pid, 'logs': folder}."""
    root = tmp_path_factory.mktemp("ray")
    # Ray 2.60 turns token auth on when ~/.ray/auth_token exists (any local `ray.init()` on this machine writes
    # one); this loopback-only test cluster and its clients (this process and every subprocess) run without it
    old_auth_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # Ray's socket paths must stay under 107 bytes: keep the temp dir short
    temp_dir = Path(f"/tmp/gdray-{os.getpid()}")
    gcs, dash = free_port(), free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--port", str(gcs), "--dashboard-port", str(dash),
           "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1", "--num-cpus", "4", "--num-gpus", "0",
           "--disable-usage-stats", "--temp-dir", str(temp_dir), "--ray-client-server-port", str(free_port()),
           # Ray's fixed default ports (agent 52365, ...) would collide with any other Ray on the machine: a second
           # cluster's job agent failed to bind and every submission was refused with "No available agent"
           "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
           "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
    # jobs run `python -m gandist...` as on a real cluster, where the environment with gandist is on PATH
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(root / "head.log", "w")
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 180
    while not (_listening(gcs) and _listening(dash)):
        if head.poll() is not None or time.time() > deadline:
            os.killpg(head.pid, signal.SIGKILL)
            pytest.fail(f"ray start --head did not come up: {(root / 'head.log').read_text()[-2000:]}")
        time.sleep(1)
    try:
        yield {"address": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "pid": head.pid,
               "logs": root, "temp_dir": temp_dir}
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its cluster on SIGTERM
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything left of this cluster's session (workers, agents)
        except ProcessLookupError:
            pass
        log.close()
        if old_auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_auth_mode


def gandist(*args: str, timeout: float = 420, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the gandist CLI in a subprocess; returns the completed process (text output)."""
    full_env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    return subprocess.run([str(VENV_BIN / "gandist"), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env)
