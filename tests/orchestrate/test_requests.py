"""Worker requests gandist cannot use are refused before Ray or Kubernetes is asked for anything."""
from __future__ import annotations

import pytest

from gandist.errors import UserError
from gandist.config import load_config
from gandist.orchestrate.ray_train import check_worker_request, split_run_dir


@pytest.mark.parametrize("workers,gpus,strategy,message", [
    (0, 0, "ddp", "--workers must be at least 1"),
    (2, 2, "ddp", "--workers 4 --gpus-per-worker 1"),
    (3, -1, "ddp", "gandist runs one process per GPU"),
    (2, 1, "single", "distributed.strategy=single would train 2 unsynced copies"),
])
def test_unusable_worker_requests_are_refused(workers, gpus, strategy, message):
    cfg = load_config(None, [f"distributed.strategy={strategy}"])
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        check_worker_request(cfg, workers, gpus)


@pytest.mark.parametrize("workers,gpus,strategy", [(1, 0, "single"), (4, 1, "zero2"), (2, 0.5, "ddp")])
def test_usable_worker_requests_pass(workers, gpus, strategy):
    check_worker_request(load_config(None, [f"distributed.strategy={strategy}"]), workers, gpus)


@pytest.mark.parametrize("run_dir,expected", [
    ("/data/runs/ring8", ("/data/runs", "ring8")),
    ("/data/runs/ring8/", ("/data/runs", "ring8")),
    ("s3://bucket/runs/ring8", ("s3://bucket/runs", "ring8")),
])
def test_run_dir_becomes_ray_storage_path_and_name(run_dir, expected):
    assert split_run_dir(run_dir) == expected
