"""Data after an elastic resize: every sample key is seen once per epoch across ranks, before and after the world size
changes (2 ranks, then 1 rank resumed from the checkpointed positions), with no overlap and no gap."""
from __future__ import annotations

from collections import Counter

import torch

from gandist.data.sources import _PermutedImages
from gandist.data.base import DataInfo
from gandist.data.stream_resize import with_every_rank
from test_stream import make_source, take
from shardkit import indices_of


class KeyedImages(_PermutedImages):
    """N one-pixel images whose value is their own key (the in-memory sources' code path: digits, folder)."""

    def __init__(self, n: int):
        self.images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
        self.labels = None
        self.info = DataInfo(shape=(1, 1, 1))


def keys(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x.flatten()]


def test_in_memory_source_sees_every_key_once_per_epoch_across_a_resize_from_2_ranks_to_1():
    # 96 samples, global batch 12 in 2 micro-batches: an epoch is 8 steps; resize after 5 steps (mid-epoch)
    source, n, batch, steps_before, steps_after = KeyedImages(96), 96, 12, 5, 11
    ranks = [source.loader(r, 2, batch, seed=7, micro_batches=2) for r in range(2)]
    seen = []
    for _ in range(steps_before):
        parts = [keys(next(it)[0]) for it in ranks]
        assert not set(parts[0]) & set(parts[1])  # the two ranks' slices of one global batch never overlap
        seen += parts[0] + parts[1]
    state = ranks[0].state_dict()  # what the checkpoint holds (every rank's is the same draw count)
    assert state == ranks[1].state_dict() == {"draw": steps_before}
    resumed = source.loader(0, 1, batch, seed=7, micro_batches=2)
    resumed.load_state_dict(state)
    for _ in range(steps_after):
        seen += keys(next(resumed)[0])
    assert len(seen) == 2 * n  # 16 steps of 12 = exactly two epochs
    assert Counter(seen[:n]) == Counter(range(n))  # epoch 0 (split over the resize): every key once
    assert Counter(seen[n:]) == Counter(range(n))  # epoch 1: every key once
    # and the keys are the very ones one process would have drawn, in the same global-batch order
    straight = source.loader(0, 1, batch, seed=7, micro_batches=2)
    single = [k for _ in range(steps_before + steps_after) for k in keys(next(straight)[0])]
    by_step = [sorted(seen[i:i + batch]) for i in range(0, len(seen), batch)]
    assert by_step == [sorted(single[i:i + batch]) for i in range(0, len(single), batch)]


def test_shard_stream_after_a_resize_finishes_the_epoch_then_reads_the_next_once(indexed_shards):
    # 300 samples in 10 shards. 2 ranks (1 stream each, 150 samples) read 40 samples each of epoch 0; a resize to
    # 1 rank resumes from every rank's position: its one stream first finishes both old streams' epoch 0 (220
    # samples), then reads epoch 1, each with no overlap and no gap (more cases: test_stream_resize.py).
    source = make_source(indexed_shards, workers=0)
    before = []
    states = []
    for rank in range(2):
        it = source.loader(rank, 2, 20, seed=3)
        before.append([i for x, _ in take(it, 4) for i in indices_of(x)])  # 4 steps of 10 samples per rank
        states.append(it.state_dict())
        it.close()
    assert not set(before[0]) & set(before[1]) and len(set(before[0] + before[1])) == 80  # no overlap before
    resumed = source.loader(0, 1, 20, seed=3)
    resumed.load_state_dict(with_every_rank(states))  # what the checkpoint holds: every rank's positions
    after = [i for x, _ in take(resumed, 26) for i in indices_of(x)]  # 26 batches of 20 = 220 + 300
    resumed.close()
    assert Counter(before[0] + before[1] + after[:220]) == Counter(range(300))  # epoch 0, split over the resize
    assert Counter(after[220:]) == Counter(range(300))  # epoch 1
