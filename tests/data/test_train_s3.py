"""`gandist data shards` to a moto S3 server, then `gandist train` from s3:// (and resume); no credential leaks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from shardkit import FAKE_KEY_ID, FAKE_SECRET

from gandist.cli import main

pytestmark = pytest.mark.slow  # a moto server and a few training steps


def write_config(path: Path, urls: str, endpoint: str, steps: int, **data) -> Path:
    config = {
        "name": "s3-digits",
        "model": {"arch": "dcgan", "ch": 8, "z_dim": 16},
        "data": {"kind": "webdataset", "urls": urls, "resolution": 16, "channels": 1, "num_classes": 10,
                 "workers": 1, "shuffle_buffer": 64, "storage_options": {"endpoint_url": endpoint}, **data},
        "train": {"steps": steps, "batch_size": 16, "ema": {"enabled": False}},
        "checkpoint": {"every": 2},
        "telemetry": {"log_every": 1, "sample_every": 0, "sample_num": 16, "progress": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def assert_no_credentials(run: Path, *texts: str) -> None:
    for f in run.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert FAKE_KEY_ID.encode() not in data and FAKE_SECRET.encode() not in data, f
    for text in texts:
        assert FAKE_KEY_ID not in text and FAKE_SECRET not in text


def test_train_streams_digits_shards_from_s3_and_resumes(moto_endpoint, s3_bucket, tmp_path, capsys):
    url = f"s3://{s3_bucket}/digits"
    assert main(["data", "shards", "digits", url, "--samples-per-shard", "300", "--resolution", "16",
                 "--endpoint-url", moto_endpoint, "--no-progress"]) == 0
    out = capsys.readouterr().out
    pattern = f"{url}/train-{{000000..000005}}.tar"
    assert f"data.urls: {pattern}" in out

    run = tmp_path / "run"
    config = write_config(tmp_path / "s3.yaml", pattern, moto_endpoint, steps=4)
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    first = metrics(run)
    assert [m["step"] for m in first][-1] == 4
    assert all(m["skipped_samples"] == 0 for m in first)
    assert all(abs(m["losses"]["D"]) < 1e3 for m in first)  # finite, trained on real batches

    # resume to step 6: the data position comes back from the step-4 checkpoint
    config = write_config(tmp_path / "s3.yaml", pattern, moto_endpoint, steps=6)
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    resumed = metrics(run)
    assert [m["step"] for m in resumed if m["step"] > 4] == [5, 6]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "start" and e.get("resumed_from") == 4 for e in events)
    captured = capsys.readouterr()
    assert_no_credentials(run, captured.out, captured.err)


def test_skipped_samples_reach_the_metrics(moto_endpoint, s3_bucket, tmp_path, capsys):
    import fsspec

    url = f"s3://{s3_bucket}/digits"
    assert main(["data", "shards", "digits", url, "--samples-per-shard", "100", "--resolution", "16",
                 "--endpoint-url", moto_endpoint, "--no-progress"]) == 0
    fsspec.filesystem("s3", endpoint_url=moto_endpoint).rm(f"{url}/train-000000.tar")
    pattern = f"{url}/train-{{000000..000017}}.tar"
    # no shuffling: shards are read in order, so the missing first shard is met at once and counted (100 samples)
    config = write_config(tmp_path / "s3.yaml", pattern, moto_endpoint, steps=2, shuffle_buffer=0, resampled=False,
                          max_skip_fraction=0.9, workers=0)
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    assert [m["skipped_samples"] for m in metrics(run)] == [100, 100]

    # the same run with the default 1% budget stops with one clear line
    strict = write_config(tmp_path / "strict.yaml", pattern, moto_endpoint, steps=2, shuffle_buffer=0,
                          resampled=False, workers=0)
    capsys.readouterr()
    assert main(["train", str(strict), "--run-dir", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert "more than data.max_skip_fraction=0.01" in err and len(err.strip().splitlines()) == 1
    assert_no_credentials(run, err)


def test_two_ddp_ranks_checkpoint_every_position_and_one_process_resumes_their_epoch(moto_endpoint, s3_bucket, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    import torch

    url = f"s3://{s3_bucket}/digits"
    assert main(["data", "shards", "digits", url, "--samples-per-shard", "150", "--resolution", "16",
                 "--endpoint-url", moto_endpoint, "--no-progress"]) == 0
    config = write_config(tmp_path / "ddp.yaml", f"{url}/train-{{000000..000011}}.tar", moto_endpoint, steps=2,
                          resampled=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(repo))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), "-m", "gandist", "train", str(config), "--run-dir", str(run),
         "--set", "distributed.strategy=ddp"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [torch.load(run / "checkpoints" / "step-00000002" / f"rank-{r:05d}.pt", weights_only=False)["data"]
              for r in (0, 1)]
    assert [s["rank"] for s in states] == [0, 1] and all(s["world_size"] == 2 for s in states)
    # batch 16 over 2 ranks: each rank took 8 samples per step from its own stream (disjoint shard sets: see
    # test_epoch_visits_every_sample_once_across_ranks_and_workers)
    assert all(s["positions"][0]["chunk"] == 0 and s["positions"][0]["emitted"] == 16 for s in states)
    # the checkpoint's data0 (what every rank loads at another world size) holds both ranks' positions
    shared = torch.load(run / "checkpoints" / "step-00000002" / "shared.pt", weights_only=False)
    assert shared["data0"]["global_positions"] == states[0]["positions"] + states[1]["positions"]
    # resumed on one process, its one stream first finishes both old streams' epoch 0 (stream_resize.py)
    config = write_config(tmp_path / "ddp.yaml", f"{url}/train-{{000000..000011}}.tar", moto_endpoint, steps=4,
                          resampled=False)
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    single = torch.load(run / "checkpoints" / "step-00000004" / "rank-00000.pt", weights_only=False)["data"]
    (position,) = single["positions"]
    assert [(t["stream"], t["start"]) for t in position["remainder"]] == [(0, 16), (1, 16)]
    assert position["emitted"] == 32  # 2 steps of 16 samples, all from old stream 0's rest of epoch 0
    assert_no_credentials(run, proc.stdout, proc.stderr)
