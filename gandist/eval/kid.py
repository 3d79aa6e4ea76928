"""KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018)."""
from __future__ import annotations

import numpy as np
import torch

from gandist.errors import UserError


def _polynomial_mmd_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 estimate between two equal-size samples [m, d] (diagonals left out of the within terms)."""
    d = x.shape[1]
    m = x.shape[0]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * kxy.mean())


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """(mean, std) of unbiased MMD^2 over `subsets` random subsets of `subset_size` of each sample set."""
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise UserError(f"KID needs at least 2 real and 2 generated samples, got {len(real)} and {len(fake)}; raise --num")
    real, fake = real.double(), fake.double()
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        xi = torch.randperm(len(real), generator=gen)[:m]
        yi = torch.randperm(len(fake), generator=gen)[:m]
        values.append(_polynomial_mmd_unbiased(real[xi], fake[yi]))
    arr = np.asarray(values)
    return float(arr.mean()), float(arr.std())
