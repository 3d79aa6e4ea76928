"""A run dir on S3 (a real moto server): everything the run writes reaches the bucket, a restart on another node
(an empty staging folder) continues the same logs, and the weights equal a run in a local folder."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import fsspec
import pytest
import torch

from gandist.api import load_run
from gandist.checkpoint import CheckpointStore
from gandist.cli import main
from gandist.config import load_config
from gandist.errors import UserError
from gandist.train.loop import run_training
from gandist.remote_run_dir import STAGING_ENV, RemoteRunDir, is_remote, join, staging_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "data"))  # the data tests' helpers, which their conftest imports
_spec = importlib.util.spec_from_file_location("data_conftest", os.path.join(REPO, "tests", "data", "conftest.py"))
_data_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_data_conftest)
moto_endpoint, s3_bucket = _data_conftest.moto_endpoint, _data_conftest.s3_bucket

TINY = ["model.hidden=16", "train.batch_size=32", "telemetry.log_every=1", "telemetry.progress=false",
        "checkpoint.every=3"]


@pytest.fixture(autouse=True)
def fresh_s3_clients():
    """fsspec caches one S3FileSystem per argument set; one made earlier in this process (another test's moto
    server, read from AWS_ENDPOINT_URL then) would be reused, so start without them."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def toy(*overrides: str):
    return load_config(os.path.join(REPO, "configs", "toy_ring8_tiny.yaml"), [*TINY, *overrides])


def lines(fs, path: str) -> list[dict]:
    return [json.loads(line) for line in fs.cat(path).decode().splitlines()]


def test_urls_and_folders_are_told_apart():
    assert is_remote("s3://b/run") and is_remote("memory://run") and not is_remote("runs/x")
    assert not is_remote("file:///tmp/run") and not is_remote("/tmp/run")
    assert join("s3://b/run/", "checkpoints") == "s3://b/run/checkpoints"
    assert join("runs/x", "checkpoints") == os.path.join("runs", "x", "checkpoints")
    assert staging_dir("s3://b/run") == staging_dir("s3://b/run/") != staging_dir("s3://c/run")


@pytest.mark.slow  # a moto server and two short runs
def test_run_dir_on_s3_resumes_from_another_node_and_matches_a_local_run(moto_endpoint, s3_bucket, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.chdir(tmp_path)
    url = f"s3://{s3_bucket}/runs/ring"
    fs = fsspec.filesystem("s3", endpoint_url=moto_endpoint)
    root = f"{s3_bucket}/runs/ring"

    # at the moment each checkpoint is committed, the URL's metrics already reach its step: a process killed right
    # after a commit leaves no gap in the logs a restart appends to
    commit, logged_at_commit = CheckpointStore.commit, {}

    def checked_commit(store, step, files, meta):
        fs.invalidate_cache()
        logged_at_commit[step] = max(m["step"] for m in lines(fs, f"{root}/metrics.jsonl"))
        return commit(store, step, files, meta)

    monkeypatch.setattr(CheckpointStore, "commit", checked_commit)
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "node-a"))
    run_training(toy("train.steps=4"), url)
    assert logged_at_commit == {3: 3, 4: 4}
    assert not (tmp_path / "s3:").exists()  # nothing took the URL for a local path
    assert fs.exists(f"{root}/config.yaml") and fs.exists(f"{root}/checkpoints/step-00000003/manifest.json")
    assert [m["step"] for m in lines(fs, f"{root}/metrics.jsonl")] == [1, 2, 3, 4]  # pushed at the end
    assert not fs.exists(f"{root}/checkpoints/lease.json") and not fs.exists(f"{root}/lease.json")

    # "another node": an empty staging folder; it pulls the logs and appends to them, resuming from step 4
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "node-b"))
    cfg = toy("train.steps=7")
    with pytest.raises(UserError, match="different config"):  # checked against the URL's config.yaml
        run_training(toy("train.steps=7", "model.hidden=32"), url)
    run_training(cfg, url, force=True)  # train.steps changed: --force, as on a local run dir
    steps = [m["step"] for m in lines(fs, f"{root}/metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6, 7], steps
    starts = [e for e in lines(fs, f"{root}/events.jsonl") if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"] == 4, starts

    # the same 7 steps in a local folder: the same weights (world-size and storage invariant)
    local = tmp_path / "local"
    run_training(toy("train.steps=4"), str(local))
    run_training(cfg, str(local), force=True)
    a, b = load_run(url, checkpoint=7), load_run(str(local), checkpoint=7)
    for net in ("G", "D", "G_ema"):  # one process, one CPU, the same sums: bitwise equal
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb), net

    # the report reads a fresh copy of the URL's logs; eval writes its result back beside them
    assert main(["report", url]) == 0
    page = (tmp_path / "report-ring.html").read_text()
    assert "toy-ring8-tiny" in page and "7 in metrics.jsonl" in page
    assert main(["eval", url, "--metrics", "modes", "--num", "256"]) == 0
    result = json.loads(fs.cat(f"{root}/eval/eval-00000007.json"))
    assert result["step"] == 7 and 0 <= result["modes"] <= 8 and result["reverse_kl"] >= 0, result


@pytest.mark.slow  # a moto server
def test_a_missing_bucket_is_refused_before_any_work(moto_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "stage"))
    cfg = toy("train.steps=2")
    with pytest.raises(UserError, match="no-such-bucket.*does not exist"):
        run_training(cfg, "s3://no-such-bucket/run")
    remote = RemoteRunDir("s3://no-such-bucket/run")
    assert list(os.listdir(remote.staging)) == []
