"""Density and coverage against a hand-computed case and a brute-force numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gandist.errors import UserError
from gandist.eval.density_coverage import density_coverage


def test_density_coverage_hand_computed_1d_case():
    # real 0, 1, 3 with k=1: radii 1, 1, 2. fake 0.5 lies in the balls of 0 and 1; 10 and 11 in none.
    # density = 2 / (1 * 3); coverage: real 0 and 1 have a fake within their radius, 3 does not (2.5 > 2) -> 2/3.
    real = torch.tensor([[0.0], [1.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0], [11.0]])
    density, coverage = density_coverage(real, fake, k=1)
    assert density == pytest.approx(2 / 3)
    assert coverage == pytest.approx(2 / 3)


def test_density_coverage_match_bruteforce_numpy():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(120, 6)), rng.normal(0.3, 1.2, size=(90, 6))
    k = 5
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radii = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    inside = np.linalg.norm(fake[:, None] - real[None], axis=-1) <= radii[None]
    expected = (inside.sum() / (k * len(fake)), inside.any(axis=0).mean())
    got = density_coverage(torch.from_numpy(real), torch.from_numpy(fake), k=k, chunk=32)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got[1] < 1 and got[0] > 0  # a non-degenerate case


def test_density_coverage_need_more_than_k_real_samples():
    with pytest.raises(UserError, match="k=5"):
        density_coverage(torch.zeros(5, 2), torch.zeros(3, 2), k=5)
