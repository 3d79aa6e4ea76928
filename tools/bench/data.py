"""Images per second delivered by the WebDataset loader: 64 px JPEG shards, 0/1/2 workers, local disk vs S3 (a local
moto server) vs an in-memory tensor baseline, and the demo model's consumption rate, printed as ratios in one run.

    .venv/bin/python tools/bench/data.py [--images 2048] [--batches 40] [--batch 64] [--demo-steps 30]

Targets (issue 5): S3 streaming >= 0.7x local; the loader >= 3x what the demo model consumes.
Each loader cell: a fresh loader, 2 untimed warm-up batches (worker start-up, first shard opens), then --batches
timed batches. The consumption rate is the median img/s of the last half of a `configs/demo_digits.yaml` training
run (batch 64, CPU), as the loop reports it in metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gandist.config import load_config  # noqa: E402
from gandist.data.config import WebDatasetConfig  # noqa: E402
from gandist.data.shards import write_shards  # noqa: E402
from gandist.data.stream import WebDatasetSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def synthetic_images(n: int, res: int = 64) -> np.ndarray:
    """n RGB images with smooth structure and noise (JPEG sizes like photos', not like flat colour)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:res, 0:res] / res
    out = np.empty((n, res, res, 3), np.uint8)
    for i in range(n):
        f = rng.uniform(1, 6, size=3)
        base = np.stack([np.sin(f[c] * (xx + yy * (c + 1)) * np.pi) for c in range(3)], -1)
        out[i] = np.clip((base * 0.4 + 0.5) * 255 + rng.normal(0, 12, base.shape), 0, 255)
    return out


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto S3 server on 127.0.0.1 with fake credentials in this process's environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}"


def loader_rate(urls: str, workers: int, batch: int, batches: int, storage_options: dict) -> float:
    """img/s delivered by a WebDatasetSource loader (after 2 warm-up batches)."""
    cfg = WebDatasetConfig(urls=urls, resolution=64, channels=3, num_classes=0, workers=workers, prefetch=2,
                           shuffle_buffer=256, resampled=True, storage_options=storage_options)
    it = WebDatasetSource(cfg).loader(0, 1, batch, seed=0)
    try:
        for _ in range(2):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            x, _ = next(it)
        assert x.shape == (batch, 3, 64, 64)
        return batch * batches / (time.perf_counter() - start)
    finally:
        it.close()


def memory_rate(images: np.ndarray, batch: int, batches: int) -> float:
    """img/s of indexing random batches out of a uint8 tensor in memory and scaling to [-1, 1] (the ceiling)."""
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(batches):
        x = data[torch.randint(len(data), (batch,), generator=g)].float().div_(127.5).sub_(1.0)
    assert x.shape == (batch, 3, 64, 64)
    return batch * batches / (time.perf_counter() - start)


def demo_consumption(steps: int, run_dir: str) -> float:
    """Median img/s over the last half of a configs/demo_digits.yaml run (the loop's own measurement)."""
    from gandist.train.loop import run_training

    cfg = load_config(ROOT / "configs" / "demo_digits.yaml",
                      [f"train.steps={steps}", "telemetry.log_every=1", "telemetry.sample_every=0",
                       "telemetry.progress=false", f"checkpoint.every={steps}"])
    run_training(cfg, run_dir, force=True)
    rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["img_per_sec"] for r in rows if r.get("img_per_sec")]
    return statistics.median(rates[len(rates) // 2:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="64 px JPEG images written (8 shards)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per cell (>> prefetched ones)")
    parser.add_argument("--demo-steps", type=int, default=30, help="steps of the demo run that measures consumption")
    args = parser.parse_args()
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="gandist-bench-data-"))
    images = synthetic_images(args.images)
    np.savez(tmp / "images.npz", x=images)
    per_shard = max(1, args.images // 8)
    write_shards(str(tmp / "images.npz"), str(tmp / "local"), samples_per_shard=per_shard, fmt="jpg", progress=False)
    proc, endpoint = start_moto()
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        s3 = {"endpoint_url": endpoint}
        report = write_shards(str(tmp / "images.npz"), "s3://bench/jpeg64", samples_per_shard=per_shard, fmt="jpg",
                              storage_options=s3, progress=False)
        pattern = report.pattern.rsplit("/", 1)[1]
        shard_kb = (tmp / "local" / "train-000000.tar").stat().st_size / 1024
        print(f"{args.images} JPEG images, 64 px, {per_shard} per shard ({shard_kb:.0f} KiB/shard); "
              f"batch {args.batch}; "
              f"{os.cpu_count()} CPU cores")
        baseline = memory_rate(images, args.batch, args.batches * 4)
        rows = []
        for workers in (0, 1, 2):
            local = loader_rate(f"{tmp}/local/{pattern}", workers, args.batch, args.batches, {})
            remote = loader_rate(f"s3://bench/jpeg64/{pattern}", workers, args.batch, args.batches, s3)
            rows.append((workers, local, remote))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        proc.terminate()
        proc.wait(10)
    try:
        consumption = demo_consumption(args.demo_steps, str(tmp / "demo-run"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'workers':>7} {'local img/s':>12} {'s3 img/s':>10} {'s3/local':>9} {'local/mem':>10} "
          f"{'local/demo':>11} {'s3/demo':>8}")
    for workers, local, remote in rows:
        print(f"{workers:>7} {local:>12.0f} {remote:>10.0f} {remote / local:>8.2f}x {local / baseline:>9.3f}x "
              f"{local / consumption:>10.1f}x {remote / consumption:>7.1f}x")
    print(f"\nin-memory tensor baseline: {baseline:.0f} img/s")
    print(f"demo consumption (configs/demo_digits.yaml, DCGAN ch 32, 16 px, batch 64, one D + one G step): "
          f"{consumption:.0f} img/s")
    best = max(rows, key=lambda r: r[1])
    s3_ok = all(remote >= 0.7 * local for _, local, remote in rows)
    feed_ok = min(best[1], best[2]) >= 3 * consumption
    print(f"target S3 >= 0.7x local (every worker count): {'met' if s3_ok else 'NOT met'}")
    print(f"target loader >= 3x consumption (best worker count, local and S3): {'met' if feed_ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
