"""SR-GAN spectral regularization under ddp (2 gloo ranks) gives single's weights: every rank computes the same
SVD of the same (all-reduced) D weights, so no rank drifts and the world-size invariance holds."""
from __future__ import annotations

import pytest

from test_train_equivalence import TOY, assert_two_ranks_match_single

pytestmark = pytest.mark.slow

SR = TOY + ["--set", "model.spectral_norm=true", "--set", "model.hidden=16",
            "--set", "penalties=[{kind: spectral_reg, every: 1, fraction: 1.0}]"]


def test_spectral_reg_under_ddp_matches_single(tmp_path):
    assert_two_ranks_match_single(SR, tmp_path, "ddp", steps=3, compare=(1, 3))
