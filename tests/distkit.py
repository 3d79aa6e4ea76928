"""Helpers of the multi-process tests: spawn N gloo processes, free ports, `gandist` under torchrun."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    import torch

    torch.set_num_threads(1)
    fn(rank, world, *args)


def spawn(fn, world: int, *args) -> None:
    """Run fn(rank, world, *args) on `world` processes with the torchrun environment set; errors propagate."""
    mp.spawn(_entry, args=(fn, world, free_port(), args), nprocs=world, join=True)


def torchrun(nproc: int, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc -m gandist ARGV` on a free port with gloo-friendly env; returns the result."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "gandist", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def gandist(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m gandist ARGV` on one process."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "gandist", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
