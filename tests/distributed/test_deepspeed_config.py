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
    assert ds["gradient_clipping"] == 1.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
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
