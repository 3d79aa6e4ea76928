"""The U-Net D (with CutMix on every step) and MSG-GAN under ddp (2 gloo ranks) give single's weights on one global
batch: G, D and the EMA G compared by tests/closekit.py's rules after two steps, with cross-replica BN.

The BN running statistics of the ResNet G (the U-Net GAN's) are left out: every bias on its residual stream is
cancelled by a later BN (the skip path carries it linearly to the output BN), so its true gradient is 0 and Adam turns
round-off into lr-sized steps; the weight comparison skips those biases (biases_cancelled_by_batch_norm), and the
running means of the BNs they feed follow them (measured: model-wide 4e-5 to 9e-5, the plain resnet pair alike).
MSG-GAN's G (DCGAN-style) is compared with them."""
from __future__ import annotations

import pytest

from test_train_equivalence import assert_two_ranks_match_single

pytestmark = pytest.mark.slow

COMMON = ["--set", "checkpoint.every=1", "--set", "checkpoint.keep_last=10", "--set", "telemetry.progress=false",
          "--set", "telemetry.sample_every=0", "--set", "train.batch_size=16", "--set", "model.ch=8",
          "--set", "distributed.cross_replica_bn=true", "--set", "train.ema.start_step=0"]
CASES = {
    # CutMix from the first step, on every D step: its coin and masks come from the world-size-invariant streams
    "unet": ["configs/unetgan_digits.yaml", *COMMON,
             "--set", "penalties=[{kind: cutmix, weight: 1.0, prob: 1.0, warmup_steps: 0}]"],
    "msggan": ["configs/msggan_digits.yaml", *COMMON],
}


@pytest.mark.parametrize("arch", sorted(CASES))
def test_unet_and_msggan_under_ddp_match_single(arch, tmp_path):
    assert_two_ranks_match_single(CASES[arch], tmp_path, "ddp", steps=2, compare=(2,), running=arch == "msggan")
