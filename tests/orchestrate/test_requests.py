"""Worker requests gandist cannot use are refused before Ray or Kubernetes is asked for anything."""
from __future__ import annotations

import pytest

from gandist.errors import UserError
from gandist.config import load_config
from gandist.orchestrate.ray_train import check_worker_request, parse_workers, split_run_dir, workers_text


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


@pytest.mark.parametrize("text,expected", [("3", (3, 3)), ("1:4", (1, 4)), ("2:2", (2, 2))])
def test_workers_take_a_count_or_an_elastic_range(text, expected):
    assert parse_workers(text) == expected
    assert workers_text(expected) == (text if text != "2:2" else "2")


@pytest.mark.parametrize("text,message", [("4:2", "MIN <= MAX"), ("0:2", "at least 1"), ("a:b", "MIN:MAX")])
def test_bad_worker_ranges_are_refused_with_the_fix(text, message):
    with pytest.raises(UserError, match=message):
        parse_workers(text)


def test_an_elastic_range_on_a_single_strategy_is_refused_by_its_maximum():
    with pytest.raises(UserError, match="--workers 1:2 with distributed.strategy=single"):
        check_worker_request(load_config(None, []), "1:2", 0)
