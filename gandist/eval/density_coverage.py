"""Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models").

Both use the real samples' k-NN balls only (the same radii as precision's real manifold), so outlying generated
samples cannot inflate them as they inflate recall's fake manifold:
  density  = 1/(k M) sum_j sum_i 1[fake_j in B(real_i, r_k(real_i))]   (unbounded; about 1 when fake ~ real)
  coverage = 1/N sum_i 1[some fake_j in B(real_i, r_k(real_i))]         (in [0, 1])
Naeem et al. recommend k = 5 with 10k samples per side; gandist uses eval.pr_k so the radii are shared with PR.
"""
from __future__ import annotations

import torch

from gandist.errors import UserError
from gandist.eval.precision_recall import _kth_neighbour_radius


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5, chunk: int = 1024) -> tuple[float, float]:
    """(density, coverage) of generated features `fake` [M, D] against real features `real` [N, D]."""
    if len(real) <= k or len(fake) < 1:
        raise UserError(f"density/coverage with k={k} needs more than {k} real samples and at least one generated, "
                        f"got {len(real)} and {len(fake)}; raise --num")
    real, fake = real.double(), fake.double()
    radii = _kth_neighbour_radius(real, k, chunk)  # [N]
    balls_hit = torch.zeros((), dtype=torch.float64)
    covered = torch.zeros(len(real), dtype=torch.bool)
    for start in range(0, len(fake), chunk):
        inside = torch.cdist(fake[start:start + chunk], real) <= radii[None, :]  # [m, N]: fake_j in ball i
        balls_hit += inside.sum()
        covered |= inside.any(dim=0)
    density = balls_hit / (k * len(fake))
    return float(density), float(covered.double().mean())
