"""Precision and recall with k-NN manifolds (Kynkaanniemi et al. 2019)."""
from __future__ import annotations

import torch

from gandist.errors import UserError


def _kth_neighbour_radius(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the row itself is the 0th neighbour)."""
    radii = []
    for start in range(0, len(feats), chunk):
        d = torch.cdist(feats[start:start + chunk], feats)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_manifold(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each query: is it within radius_j of some support point j?"""
    hits = []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start:start + chunk], support)
        hits.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(hits)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """(precision, recall): share of fake samples inside the real k-NN manifold, and of real inside the fake one."""
    if len(real) <= k or len(fake) <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} real and generated samples, got {len(real)} and {len(fake)}; raise --num")
    real, fake = real.double(), fake.double()
    real_radii = _kth_neighbour_radius(real, k, chunk)
    fake_radii = _kth_neighbour_radius(fake, k, chunk)
    precision = _inside_manifold(fake, real, real_radii, chunk).double().mean()
    recall = _inside_manifold(real, fake, fake_radii, chunk).double().mean()
    return float(precision), float(recall)
