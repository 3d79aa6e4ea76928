"""The DeepSpeed config generated from gandist's config: batch arithmetic, buckets, and refused options."""
from __future__ import annotations

import pytest

from gandist.config import load_config
from gandist.errors import UserError
from gandist.strategies.zero import deepspeed_config


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_deepspeed_config_follows_gandist_batch_clip_precision_and_stage():
    cfg = _cfg("train.batch_size=48", "distributed.zero.offload_optimizer=true")
    ds = deepspeed_config(cfg, stage=2, world_size=4, accumulation=3, grad_clip=1.5, amp="bf16", numel=87_060_481)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (48, 4, 3)
    # bf16 is gandist's autocast (fp32 weights as under single/ddp), never DeepSpeed's bf16-weights mode
    assert ds["gradient_clipping"] == 1.5 and not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu"
    # buckets: at least the net's size, a multiple of DeepSpeed's alignment (87060481 is odd: DeepSpeed refused it)
    assert zero["reduce_bucket_size"] >= 87_060_481 and zero["reduce_bucket_size"] % 512 == 0


def test_zero3_keeps_small_tensors_whole_and_partitions_matrices():
    ds = deepspeed_config(_cfg(), stage=3, world_size=2, accumulation=1, grad_clip=0.0, amp="off", numel=10**5)
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 1024


def test_offload_params_without_zero3_is_a_clear_error():
    with pytest.raises(UserError, match="offload_params needs distributed.strategy=zero3"):
        deepspeed_config(_cfg("distributed.zero.offload_params=true"), 2, 2, 1, 0.0, "off")


def test_batch_that_does_not_divide_names_both_numbers():
    with pytest.raises(UserError, match="train.batch_size 30 is not divisible by world size 4 x optim.accumulation 2"):
        deepspeed_config(_cfg("train.batch_size=30"), 2, 4, 2, 0.0, "off")


def test_zero3_with_a_gradient_penalty_is_refused_before_training():
    # DeepSpeed ZeRO-3 cannot run the second backward of R1 / GP / DRAGAN / path length (weights re-partitioned)
    with pytest.raises(Exception, match="r1 differentiate.* twice.*use distributed.strategy=zero2"):
        _cfg("distributed.strategy=zero3", "penalties=[{kind: r1, weight: 1.0}]")
    _cfg("distributed.strategy=zero2", "penalties=[{kind: r1, weight: 1.0}]")  # zero2 keeps weights whole
    _cfg("distributed.strategy=zero3", "penalties=[{kind: ortho, weight: 1.0e-4}]")  # first-order: fine


def test_partition_friendly_order_puts_only_small_tensors_across_the_cuts():
    import torch
    from torch import nn

    from gandist.strategies.zero import partition_friendly_order

    sizes = [21_000, 300, 9_000, 21_000, 64, 5_000, 12_000, 700, 4_000, 96, 2_500, 128]
    params = [nn.Parameter(torch.zeros(n)) for n in sizes]
    for world in (2, 3, 4):
        ordered = partition_friendly_order(params, world)
        assert sorted(map(id, ordered)) == sorted(map(id, params))  # a permutation
        assert [id(p) for p in partition_friendly_order(params, world)] == [id(p) for p in ordered]
        total = sum(sizes)
        part = -(-total // world)
        starts, offset = [], 0
        for p in ordered:
            starts.append(offset)
            offset += p.numel()
        crossing = [p.numel() for p, a in zip(ordered, starts)
                    if any(a < k * part < a + p.numel() for k in range(1, world))]
        in_module_order = [n for n, a in zip(sizes, [sum(sizes[:i]) for i in range(len(sizes))])
                           if any(a < k * part < a + n for k in range(1, world))]
        assert sum(crossing) <= sum(in_module_order), (world, crossing, in_module_order)
    # world 2: the cut falls between the two halves, across small tensors only
    ordered = partition_friendly_order(params, 2)
    assert max(p.numel() for p, a in zip(ordered, [sum(q.numel() for q in ordered[:i]) for i in range(12)])
               if a < -(-sum(sizes) // 2) < a + p.numel()) <= 700


def test_fp16_under_zero_is_refused_with_the_alternative():
    with pytest.raises(UserError, match="train.amp=fp16 with distributed.strategy=zero.*use train.amp=bf16"):
        deepspeed_config(_cfg(), 2, 2, 1, 0.0, "fp16")
