"""Inception Score: exp(E_x KL(p(y|x) || p(y))), streamed per split in float64 sums (sum p(y|x), sum p log p)."""
from __future__ import annotations

import torch

from gandist.errors import UserError
from gandist.eval.streaming import sum_over_ranks


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
        packed = sum_over_ranks(torch.cat([self.n, self.neg_entropy_sum, self.prob_sum.reshape(-1)]), strategy)
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
