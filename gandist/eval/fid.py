"""FID, KID, Inception Score and precision/recall on feature vectors, with streaming statistics.

Memory: FID and IS keep running sums in float64 (sum x, sum x x^T; sum p(y|x), sum p log p), so 50k samples of
2048-d features need 2048x2048 doubles (32 MiB), never a 50k x 2048 matrix. KID and precision/recall need the
features themselves; they use a bounded buffer of the first `capacity` samples (samples are i.i.d., so the first
ones are a fair subset). Every accumulator merges across ranks by summing tensors with a Strategy's all_reduce.
"""
from __future__ import annotations

import numpy as np
import torch

from gandist.errors import UserError


def _reduce(tensor: torch.Tensor, strategy) -> torch.Tensor:
    """Sum a tensor over ranks (identity without a strategy or on one process)."""
    if strategy is None or getattr(strategy, "world_size", 1) == 1:
        return tensor
    return strategy.all_reduce(tensor, "sum")


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
        packed = _reduce(packed, strategy)
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


class FeatureBuffer:
    """Feature vectors of the samples with global index < limit, gathered across ranks in global order.

    Keeping "the first `limit` samples" by global index (not per rank) makes KID and precision/recall independent
    of the number of ranks: every world size sees the same subset in the same order.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[torch.Tensor] = []
        self.index: list[torch.Tensor] = []
        self.n = 0

    def update(self, features: torch.Tensor, start: int | None = None) -> None:
        """Add a batch whose first sample has global index `start` (default: right after the previous batch)."""
        start = self.n if start is None else start
        keep = max(0, min(len(features), self.limit - start))
        if keep:
            self.parts.append(features.detach().to("cpu", torch.float32).reshape(len(features), -1)[:keep])
            self.index.append(torch.arange(start, start + keep))
            self.n += keep

    def gather(self, strategy) -> torch.Tensor:
        """All ranks' features [total, dim], sorted by global index (a sum all-reduce of zero-padded slots)."""
        local = torch.cat(self.parts) if self.parts else torch.zeros(0, 0)
        index = torch.cat(self.index) if self.index else torch.zeros(0, dtype=torch.long)
        world = getattr(strategy, "world_size", 1) if strategy is not None else 1
        if world > 1:
            rank = strategy.rank
            meta = torch.zeros(2 * world, dtype=torch.float64)
            meta[rank], meta[world + rank] = float(self.n), float(local.shape[1] if self.n else 0)
            meta = _reduce(meta, strategy)
            counts = [int(c) for c in meta[:world].tolist()]
            dim, most = int(meta[world:].max()), max(counts)
            slots = torch.zeros(world, most, dim + 1, dtype=torch.float64)  # last column: global index
            if self.n:
                slots[rank, :self.n, :dim] = local.double()
                slots[rank, :self.n, dim] = index.double()
            slots = _reduce(slots, strategy)
            rows = torch.cat([slots[r, :counts[r]] for r in range(world)])
            local, index = rows[:, :dim].float(), rows[:, dim].long()
        return local[torch.argsort(index)]


# ---------------------------------------------------------------------------------------------------------------
# KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018)


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


# ---------------------------------------------------------------------------------------------------------------
# Inception Score: exp(E_x KL(p(y|x) || p(y))), streamed per split


class InceptionScoreStats:
    """Per-split running sums of p(y|x) and of sum_y p log p; sample i goes to split i mod splits."""

    def __init__(self, num_classes: int, splits: int = 10):
        self.splits = splits
        self.n = torch.zeros(splits, dtype=torch.float64)
        self.prob_sum = torch.zeros(splits, num_classes, dtype=torch.float64)
        self.neg_entropy_sum = torch.zeros(splits, dtype=torch.float64)
        self.seen = 0

    def update(self, logits: torch.Tensor, start: int | None = None) -> None:
        """Add a batch of classifier logits [N, classes] whose first sample has global index `start`."""
        logp = torch.log_softmax(logits.detach().to("cpu", torch.float64), dim=1)
        p = logp.exp()
        start = self.seen if start is None else start  # global index: the same splits on any number of ranks
        split = (torch.arange(len(p)) + start) % self.splits
        self.seen += len(p)
        self.n.index_add_(0, split, torch.ones(len(p), dtype=torch.float64))
        self.prob_sum.index_add_(0, split, p)
        self.neg_entropy_sum.index_add_(0, split, (p * logp).sum(1))

    def all_reduce(self, strategy) -> "InceptionScoreStats":
        """Sum over ranks, in place."""
        k = self.prob_sum.shape[1]
        packed = _reduce(torch.cat([self.n, self.neg_entropy_sum, self.prob_sum.reshape(-1)]), strategy)
        s = self.splits
        self.n, self.neg_entropy_sum, self.prob_sum = packed[:s].clone(), packed[s:2 * s].clone(), packed[2 * s:].reshape(s, k).clone()
        return self

    def score(self) -> tuple[float, float]:
        """(mean, std) of the Inception Score over the splits."""
        if float(self.n.min()) < 1:
            raise UserError(f"Inception Score needs at least one sample per split ({self.splits} splits), got {int(self.n.sum())}; raise --num")
        p_y = self.prob_sum / self.n[:, None]
        marginal_neg_entropy = torch.where(p_y > 0, p_y * p_y.log(), torch.zeros_like(p_y)).sum(1)
        kl = self.neg_entropy_sum / self.n - marginal_neg_entropy
        scores = kl.exp().numpy()
        return float(scores.mean()), float(scores.std())


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score of a logits matrix [N, classes] (convenience wrapper of InceptionScoreStats)."""
    stats = InceptionScoreStats(logits.shape[1], splits)
    stats.update(logits)
    return stats.score()


# ---------------------------------------------------------------------------------------------------------------
# Precision and recall with k-NN manifolds (Kynkaanniemi et al. 2019)


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


def min_samples(metric: str, *, k: int = 3, splits: int = 10) -> int:
    """The fewest samples a metric can be computed from (for early, clear errors)."""
    return {"fid": 2, "kid": 2, "is": splits, "pr": k + 1}.get(metric, 1)

