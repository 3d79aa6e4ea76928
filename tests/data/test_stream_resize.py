"""Shard streams across a resize: the new layout finishes the chunks the old streams left (stream_resize.py), so every
sample key of the interrupted epochs is seen exactly once across before + after, shrinking and growing, and a resume
or another resize in the middle of that remainder continues it exactly."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from gandist.data.stream_resize import with_every_rank
from shardkit import indices_of
from test_stream import make_source, take

EPOCH = range(300)  # indexed_shards: 10 shards of 30 samples


def tagged(it, n: int) -> list[tuple[torch.Tensor, dict]]:
    """n batches as (images, the position of the stream that gave the batch, after it)."""
    out = []
    for _ in range(n):
        before = [dict(p) for p in it.positions]
        x, _ = next(it)
        changed = [i for i, p in enumerate(it.positions) if p != before[i]]
        assert len(changed) == 1
        out.append((x, dict(it.positions[changed[0]])))
    return out


def finish_remainder(it, next_chunk: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Batches until every stream of `it` stands in next_chunk: (images before it, images of next_chunk)."""
    remainder, fresh = [], []
    while any(p.get("remainder") or p["chunk"] < next_chunk or p["emitted"] == 0 for p in it.positions):
        for x, position in tagged(it, 1):
            if position.get("remainder") or position["chunk"] < next_chunk:
                remainder += list(x)
                continue
            assert position["chunk"] == next_chunk
            new = min(position["emitted"], len(x))  # the batch's last `new` samples come from the new chunk
            remainder, fresh = remainder + list(x[:len(x) - new]), fresh + list(x[len(x) - new:])
    return remainder, fresh


def keys(images: list[torch.Tensor]) -> list[int]:
    return indices_of(torch.stack(images)) if images else []


def run_ranks(source, world: int, batch: int, steps: int, state: dict | None = None):
    """`world` ranks each take `steps` batches (from `state` if given): (keys, every rank's state, iterators)."""
    keys, states, its = [], [], []
    for rank in range(world):
        it = source.loader(rank, world, batch, seed=3)
        if state is not None:
            it.load_state_dict(state)
        keys += [k for x, _ in take(it, steps) for k in indices_of(x)]
        states.append(it.state_dict())
        its.append(it)
    return keys, states, its


def test_shrink_2x2_to_1x2_finishes_both_interrupted_epochs_once(indexed_shards):
    # 4 streams of 3, 3, 2, 2 shards (90, 90, 60, 60 samples); 7 batches of 10 each: rank 0's streams stand at
    # (epoch 0, 70), rank 1's have finished epoch 0 and stand at (epoch 1, 10). One rank of 2 streams then takes
    # streams 0+2 and 1+3: epochs 0 and 1 are done with every key exactly twice, and epoch 2 starts fresh.
    source = make_source(indexed_shards, workers=2)
    before, states, its = run_ranks(source, 2, 20, 14)
    for it in its:
        it.close()
    assert [(p["chunk"], p["emitted"]) for s in states for p in s["positions"]] == [(0, 70)] * 2 + [(1, 10)] * 2
    resumed = source.loader(0, 1, 20, seed=3)
    resumed.load_state_dict(with_every_rank(states))
    assert [len(p["remainder"]) for p in resumed.positions] == [3, 3]  # (0 from 70), (1 whole), (1 from 10)
    remainder, fresh = map(keys, finish_remainder(resumed, next_chunk=2))
    resumed.close()
    assert len(remainder) == 2 * 300 - len(before)
    assert Counter(before + remainder) == Counter({k: 2 for k in EPOCH})
    assert fresh and len(set(fresh)) == len(fresh)


def test_grow_1x2_to_2x2_splits_each_remainder_between_two_streams(indexed_shards):
    # 2 streams of 150 samples stop at 40 and 20 (3 batches of 20, round-robin); on 2 ranks x 2 workers old stream
    # g is shared by new streams g and g + 2, each taking every other remaining sample. With flips on, the remainder
    # is the very images (flips included) the uninterrupted run goes on to give in epoch 0.
    source = make_source(indexed_shards, workers=2, hflip=True)
    old = source.loader(0, 1, 20, seed=3)
    before = [image for x, _ in take(old, 3) for image in x]
    state = with_every_rank([old.state_dict()])  # the checkpoint's data0: the merge of every rank's state
    assert [(p["chunk"], p["emitted"]) for p in state["positions"]] == [(0, 40), (0, 20)]
    uninterrupted = finish_remainder(old, next_chunk=1)[0]
    old.close()
    remainder = []
    for rank in range(2):
        it = source.loader(rank, 2, 20, seed=3)
        it.load_state_dict(state)  # what every rank loads at another world size (the checkpoint's data0)
        remainder += finish_remainder(it, next_chunk=1)[0]
        it.close()
    assert len(before) + len(remainder) == 300
    assert sorted(image_bytes(remainder)) == sorted(image_bytes(uninterrupted))
    assert len(set(image_bytes(before + remainder))) == 300  # and so every sample of epoch 0 once


def image_bytes(images: list[torch.Tensor]) -> list[bytes]:
    return [image.numpy().tobytes() for image in images]


def test_resume_and_resize_in_the_middle_of_the_remainder_continue_it(indexed_shards):
    # 2 ranks x 1 stream (150 samples each) stop at 50 each; one rank (1 stream) takes both remainders, 120 samples
    # into them it is checkpointed: a same-layout resume continues bitwise, and a resize to 3 ranks finishes the rest.
    source = make_source(indexed_shards)
    before, states, _ = run_ranks(source, 2, 10, 10)
    single = source.loader(0, 1, 10, seed=3)
    single.load_state_dict(with_every_rank(states))
    middle = [k for x, _ in take(single, 12) for k in indices_of(x)]
    state = single.state_dict()
    assert [t["start"] for t in state["positions"][0]["remainder"]] == [50] and state["positions"][0]["emitted"] == 20
    tail = take(single, 6)
    again = source.loader(0, 1, 10, seed=3)
    again.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(tail, take(again, 6)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    remainder = []
    for rank in range(3):
        it = source.loader(rank, 3, 30, seed=3)
        it.load_state_dict(with_every_rank([state]))  # the checkpoint's data0 of the 1-rank run
        remainder += keys(finish_remainder(it, next_chunk=1)[0])
    assert Counter(before + middle + remainder) == Counter(EPOCH)


def test_state_without_every_ranks_positions_starts_the_next_chunk_with_a_warning(indexed_shards, caplog):
    # a checkpoint written before positions were gathered (or a resampled run): one rank's positions cannot say
    # what the others left, so the streams start a fresh chunk and the log says so
    source = make_source(indexed_shards)
    it = source.loader(0, 2, 20, seed=3)
    take(it, 2)
    state = it.state_dict()
    assert "global_positions" not in state  # one rank's own state: the checkpointer merges every rank's
    resumed = source.loader(0, 1, 20, seed=3)
    with caplog.at_level("WARNING", logger="gandist.data"):
        resumed.load_state_dict(state)
    assert resumed.positions == [{"chunk": 1, "emitted": 0, "skipped": 0, "seen": 0}]
    assert any("streams restart at chunk 1" in r.getMessage() for r in caplog.records)


def test_resize_when_there_are_fewer_shards_than_streams(indexed_shards):
    # 2 shards (60 samples) for 3 ranks: every stream reads both and keeps every 3rd sample (20 each); after 10 each,
    # one rank finishes the three remainders (30 samples) and then reads epoch 1 whole.
    source = make_source(indexed_shards, urls=f"{indexed_shards}/train-{{000000..000001}}.tar")
    before, states, _ = run_ranks(source, 3, 15, 2)
    resumed = source.loader(0, 1, 15, seed=3)
    resumed.load_state_dict(with_every_rank(states))
    after = [k for x, _ in take(resumed, 6) for k in indices_of(x)]
    assert Counter(before + after[:30]) == Counter(range(60)) == Counter(after[30:])
