"""Streaming from a real moto S3 server: same samples as local, transient errors retried, lost shards counted."""
from __future__ import annotations

import logging

import fsspec
import pytest
from shardkit import indices_of

from gandist.data.config import WebDatasetConfig
from gandist.data.shards import write_shards
from gandist.data.stream import WebDatasetSource
from gandist.errors import UserError

pytestmark = pytest.mark.slow  # starts a moto server

PATTERN = "train-{000000..000009}.tar"
NO_BOTO_RETRY = {"retries": {"max_attempts": 1}}  # so that gandist's own retry is what the test sees


def s3_shards(endpoint, bucket, npz) -> str:
    url = f"s3://{bucket}/indexed"
    write_shards(str(npz), url, samples_per_shard=30, storage_options={"endpoint_url": endpoint}, progress=False)
    return url


def epoch(source, batch=30, batches=10) -> list[int]:
    it = source.loader(0, 1, batch, seed=0)
    try:
        return [i for _ in range(batches) for i in indices_of(next(it)[0])], it
    finally:
        it.close()


def make(url, endpoint, **overrides) -> WebDatasetSource:
    settings = dict(urls=f"{url}/{PATTERN}", resolution=8, channels=1, num_classes=10, workers=0, shuffle_buffer=50,
                    resampled=False, hflip=False, retry_backoff=0.01, storage_options={"endpoint_url": endpoint})
    settings.update(overrides)
    return WebDatasetSource(WebDatasetConfig(**settings))


def test_s3_stream_delivers_the_same_batches_as_local(moto_endpoint, s3_bucket, indexed_npz, indexed_shards):
    url = s3_shards(moto_endpoint, s3_bucket, indexed_npz)
    remote, _ = epoch(make(url, moto_endpoint, workers=2))
    local, _ = epoch(make(str(indexed_shards), moto_endpoint, workers=2, storage_options={}))
    assert remote == local and sorted(remote) == list(range(300))


def test_transient_s3_errors_are_retried_with_backoff(fault_proxy, s3_bucket, indexed_npz, caplog):
    url = s3_shards(fault_proxy.endpoint, s3_bucket, indexed_npz)
    # s3fs re-reads a failed range once inside each open, so 4 failed GETs are 2 failed opens for gandist
    fault_proxy.match, fault_proxy.fail_gets = "train-000003.tar", 4
    source = make(url, fault_proxy.endpoint, retries=3,
                  storage_options={"endpoint_url": fault_proxy.endpoint, "config_kwargs": NO_BOTO_RETRY})
    with caplog.at_level(logging.WARNING, logger="gandist.data"):
        got, it = epoch(source)
    assert fault_proxy.failed == 4
    assert sorted(got) == list(range(300)) and it.skipped_samples == 0
    retries = [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]
    assert len(retries) == 2 and f"{url}/train-000003.tar" in retries[0] and "retry 2/3" in retries[1]


def test_s3_errors_beyond_the_retries_skip_the_shard(fault_proxy, s3_bucket, indexed_npz, caplog):
    url = s3_shards(fault_proxy.endpoint, s3_bucket, indexed_npz)
    fault_proxy.match, fault_proxy.fail_gets = "train-000005.tar", 100
    source = make(url, fault_proxy.endpoint, retries=1, max_skip_fraction=0.2,
                  storage_options={"endpoint_url": fault_proxy.endpoint, "config_kwargs": NO_BOTO_RETRY})
    with caplog.at_level(logging.WARNING, logger="gandist.data"):
        got, it = epoch(source, batch=27)
    assert sorted(got) == [i for i in range(300) if not 150 <= i < 180]
    assert it.skipped_samples == 30 and fault_proxy.failed == 4  # (first try + 1 retry) x s3fs's 2 reads
    assert any(f"skipping {url}/train-000005.tar" in r.getMessage() for r in caplog.records)


def test_missing_and_corrupt_s3_shards_are_skipped_and_counted(moto_endpoint, s3_bucket, indexed_npz):
    url = s3_shards(moto_endpoint, s3_bucket, indexed_npz)
    fs = fsspec.filesystem("s3", endpoint_url=moto_endpoint)
    fs.rm(f"{url}/train-000002.tar")
    fs.pipe(f"{url}/train-000007.tar", b"\x00garbage, not a tar file" * 100)
    got, it = epoch(make(url, moto_endpoint, max_skip_fraction=0.5), batch=24)  # early skips weigh more
    assert sorted(got) == [i for i in range(300) if not (60 <= i < 90 or 210 <= i < 240)]
    assert it.skipped_samples == 60 and it.seen_samples == 300


def test_s3_pattern_matching_nothing_names_the_url(moto_endpoint, s3_bucket):
    first = f"s3://{s3_bucket}/none/train-000000.tar"
    with pytest.raises(UserError, match=rf"matches no existing shard \(first: {first}\)"):
        make(f"s3://{s3_bucket}/none", moto_endpoint)


def test_s3_bucket_that_does_not_exist_names_the_url(moto_endpoint):
    with pytest.raises(UserError, match=r"s3://gandist-no-such-bucket/x/train-000000\.tar"):
        make("s3://gandist-no-such-bucket/x", moto_endpoint)
