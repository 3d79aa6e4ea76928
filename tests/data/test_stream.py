"""The WebDataset source: shapes and values, splitting across ranks and workers, exact resume, faults, bad input."""
from __future__ import annotations

import io
import logging

import pytest
import torch
from webdataset import TarWriter

from gandist.data.config import WebDatasetConfig
from gandist.data.stream import DataStreamError, WebDatasetSource
from gandist.errors import UserError
from shardkit import indexed_images, indices_of

PATTERN = "train-{000000..000009}.tar"


def make_source(root, **overrides) -> WebDatasetSource:
    settings = dict(urls=f"{root}/{PATTERN}", resolution=8, channels=1, num_classes=10, workers=0,
                    shuffle_buffer=50, resampled=False, hflip=False, retry_backoff=0.01)
    settings.update(overrides)
    return WebDatasetSource(WebDatasetConfig(**settings))


def take(iterator, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(iterator) for _ in range(n)]


def test_batches_hold_the_written_pixels_and_labels(indexed_shards):
    it = make_source(indexed_shards).loader(0, 1, 30, seed=0)
    x, y = next(it)
    assert x.shape == (30, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    images = indexed_images(300)
    for image, label, index in zip(x, y, indices_of(x)):
        assert torch.equal(image[0], torch.from_numpy(images[index]).float() / 127.5 - 1.0)
        assert label == index % 10
    assert x.min() >= -1 and x.max() <= 1


def test_epoch_visits_every_sample_once_across_ranks_and_workers(indexed_shards):
    # 10 shards over 2 ranks x 2 workers: streams get 3, 3, 2, 2 shards = 9, 9, 6, 6 batches of 10 in epoch 0.
    source = make_source(indexed_shards, workers=2)
    seen = []
    for rank, batches in ((0, 18), (1, 12)):
        it = source.loader(rank, 2, 20, seed=3)
        seen += [i for x, _ in take(it, batches) for i in indices_of(x)]
        assert [p["chunk"] for p in it.state_dict()["positions"]] == [0, 0]
        it.close()
    assert sorted(seen) == list(range(300))


def test_shuffle_is_seeded_and_resize_gives_the_model_resolution(indexed_shards):
    a = indices_of(next(make_source(indexed_shards).loader(0, 1, 30, seed=1))[0])
    b = indices_of(next(make_source(indexed_shards).loader(0, 1, 30, seed=1))[0])
    c = indices_of(next(make_source(indexed_shards).loader(0, 1, 30, seed=2))[0])
    assert a == b and a != c and a != sorted(a)
    x, _ = next(make_source(indexed_shards, resolution=16, channels=3, hflip=True).loader(0, 1, 4, seed=0))
    assert x.shape == (4, 3, 16, 16)


@pytest.mark.parametrize("resampled, workers", [(False, 2), (True, 2), (False, 0)])
def test_resume_continues_exactly_where_it_stopped(indexed_shards, resampled, workers):
    source = make_source(indexed_shards, resampled=resampled, workers=workers, hflip=True)
    first = source.loader(1, 2, 16, seed=5)
    head = take(first, 7)  # 7 batches of 8: mid-shard, mid-chunk, odd batch count (rotates the workers)
    state = first.state_dict()
    tail = take(first, 5)
    first.close()
    resumed = source.loader(1, 2, 16, seed=5)
    resumed.load_state_dict(state)
    again = take(resumed, 5)
    resumed.close()
    for (xa, ya), (xb, yb) in zip(tail, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(again[0][0], head[0][0])  # continued, not replayed


def test_resampled_ranks_never_run_out(indexed_shards):
    # 300 samples; rank 0 of 2 draws 40 batches of 10 = 400 samples, more than an epoch holds.
    it = make_source(indexed_shards, resampled=True, workers=1).loader(0, 2, 20, seed=0)
    got = [i for x, _ in take(it, 40) for i in indices_of(x)]
    it.close()
    assert len(got) == 400 and len(set(got)) > 150


def test_missing_shard_is_skipped_counted_and_named(indexed_shards, caplog):
    (indexed_shards / "train-000004.tar").unlink()
    source = make_source(indexed_shards, max_skip_fraction=0.2)
    it = source.loader(0, 1, 27, seed=0)
    with caplog.at_level(logging.WARNING, logger="gandist.data"):
        got = [i for x, _ in take(it, 10) for i in indices_of(x)]  # 270 samples: the whole epoch
    assert sorted(got) == [i for i in range(300) if not 120 <= i < 150]
    assert it.skipped_samples == 30 and it.seen_samples == 300
    assert any("train-000004.tar" in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)


def test_truncated_shard_counts_its_lost_samples(indexed_shards, caplog):
    path = indexed_shards / "train-000002.tar"
    # A sample is 3 members (cls, json, png) of 512-byte header + 512-byte data: cut inside the 13th sample.
    path.write_bytes(path.read_bytes()[: 12 * 3 * 1024 + 700])
    it = make_source(indexed_shards, max_skip_fraction=0.2).loader(0, 1, 47, seed=0)
    with caplog.at_level(logging.WARNING, logger="gandist.data"):
        got = [i for x, _ in take(it, 6) for i in indices_of(x)]  # 282 = 300 - 18 lost: the whole epoch
    assert it.skipped_samples == 18 and it.seen_samples == 300
    assert sorted(got) == [i for i in range(300) if not 72 <= i < 90]
    assert any("train-000002.tar" in r.getMessage() for r in caplog.records)


def test_undecodable_image_is_skipped_and_counted(tmp_path, caplog):
    images = indexed_images(20)
    from PIL import Image

    with TarWriter(str(tmp_path / "train-000000.tar"), encoder=False) as tar:
        for i in range(20):
            buf = io.BytesIO()
            Image.fromarray(images[i]).save(buf, format="PNG")
            data = buf.getvalue() if i != 7 else b"\x89PNG garbage, not an image"
            tar.write({"__key__": f"{i:04d}", "png": data, "cls": str(i % 10).encode()})
    source = make_source(tmp_path, urls=f"{tmp_path}/train-000000.tar", shuffle_buffer=0, max_skip_fraction=0.1)
    it = source.loader(0, 1, 19, seed=0)
    with caplog.at_level(logging.WARNING, logger="gandist.data"):
        x, _ = next(it)
    assert indices_of(x) == [i for i in range(20) if i != 7]
    assert it.skipped_samples == 1
    assert any("'0007'" in r.getMessage() and "cannot decode" in r.getMessage() for r in caplog.records)


def test_skips_beyond_the_budget_stop_with_a_clear_error(indexed_shards):
    for name in ("train-000001.tar", "train-000006.tar"):
        (indexed_shards / name).unlink()
    it = make_source(indexed_shards, max_skip_fraction=0.1, workers=2).loader(0, 1, 10, seed=0)
    message = r"(30|60) of \d+ samples skipped \(\d+\.\d%\), more than data.max_skip_fraction=0.1"
    with pytest.raises(DataStreamError, match=message):
        take(it, 30)


def test_pattern_matching_nothing_names_the_url(tmp_path):
    with pytest.raises(UserError, match=r"matches no existing shard .*/nothing-000000.tar"):
        make_source(tmp_path, urls=f"{tmp_path}/nothing-{{000000..000003}}.tar")


def test_pattern_beyond_the_manifest_is_a_disagreement(indexed_shards):
    message = r"train-000010.tar: not in .*manifest.json \(2 such shard\(s\)\); the manifest disagrees"
    with pytest.raises(UserError, match=message):
        make_source(indexed_shards, urls=f"{indexed_shards}/train-{{000000..000011}}.tar")


def test_manifest_class_count_must_match_the_config(indexed_shards):
    with pytest.raises(UserError, match="lists 10 classes but data.num_classes is 7"):
        make_source(indexed_shards, num_classes=7)


def test_sample_without_the_configured_key_names_the_url(indexed_shards):
    it = make_source(indexed_shards, image_key="jpg;webp").loader(0, 1, 10, seed=0)
    with pytest.raises(DataStreamError, match=r"train-0000\d\d.tar: sample '\d+' has no jpg;webp key .*image_key"):
        next(it)


def test_credentials_in_storage_options_are_rejected():
    with pytest.raises(ValueError, match="credentials do not belong in the config"):
        WebDatasetConfig(urls="s3://b/x.tar", storage_options={"client_kwargs": {"aws_secret_access_key": "s"}})


def test_real_samples_gathers_n_distinct_images_in_small_batches(indexed_shards):
    x, y = make_source(indexed_shards, workers=1).real_samples(270, seed=0)
    assert x.shape == (270, 1, 8, 8) and y.shape == (270,)
    got = indices_of(x)
    assert len(set(got)) == 270 and all(label == i % 10 for label, i in zip(y.tolist(), got))


def test_fewer_shards_than_streams_split_by_sample(indexed_shards):
    # 3 shards (90 samples) for 2 ranks x 2 workers: every stream reads all three and keeps every 4th sample,
    # so streams hold 23, 23, 22, 22 samples of the epoch.
    source = make_source(indexed_shards, urls=f"{indexed_shards}/train-{{000000..000002}}.tar", workers=2)
    seen = []
    for rank, per_rank_batch in ((0, 23), (1, 22)):
        it = source.loader(rank, 2, 2 * per_rank_batch, seed=1)
        seen += [i for x, _ in take(it, 2) for i in indices_of(x)]
        it.close()
    assert sorted(seen) == list(range(90))
