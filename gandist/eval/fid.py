"""FID (Heusel et al. 2017): streaming feature statistics and the Frechet distance between two Gaussians.

Memory: FeatureStats keeps running sums in float64 (sum x, sum x x^T), so 50k samples of 2048-d features need
2048x2048 doubles (32 MiB), never a 50k x 2048 matrix; it merges across ranks by a sum all-reduce.
"""
from __future__ import annotations

import numpy as np
import torch

from gandist.errors import UserError
from gandist.eval.streaming import sum_over_ranks


class FeatureStats:
    """Running mean and covariance of feature vectors (float64 sums, mergeable across ranks)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features [N, dim]."""
        f = features.detach().to("cpu", torch.float64).reshape(len(features), -1)
        if f.shape[1] != self.dim:
            raise ValueError(f"FeatureStats of dim {self.dim} got features of dim {f.shape[1]}")
        self.n += len(f)
        self.total += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self, strategy) -> "FeatureStats":
        """Sum the statistics over ranks, in place."""
        packed = torch.cat([torch.tensor([float(self.n)], dtype=torch.float64), self.total, self.outer.reshape(-1)])
        packed = sum_over_ranks(packed, strategy)
        self.n = int(round(float(packed[0])))
        self.total = packed[1:1 + self.dim].clone()
        self.outer = packed[1 + self.dim:].reshape(self.dim, self.dim).clone()
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu [dim], sigma [dim, dim]) as float64 numpy; unbiased covariance (divides by n - 1)."""
        if self.n < 2:
            raise UserError(f"FID needs at least 2 samples to estimate a covariance, got {self.n}; raise --num")
        mu = self.total / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), cov.numpy()

    def save(self, path: str) -> None:
        """Write mu and sigma (and n) as .npz, the format pytorch-fid uses for precomputed statistics."""
        mu, sigma = self.mean_cov()
        np.savez(path, mu=mu, sigma=sigma, n=self.n)


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negative eigenvalues -> 0)."""
    sym = (matrix + matrix.T) / 2
    vals, vecs = np.linalg.eigh(sym)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) = tr(sqrtm(s1^1/2 sigma2 s1^1/2)); the symmetric form is real and stable."""
    root1 = sqrtm_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    vals = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(vals, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(s1 + s2 - 2 sqrt(s1 s2))."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))
