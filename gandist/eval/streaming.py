"""What the metrics share across ranks: a sum over ranks, and a buffer of the first `limit` samples' features.

Every accumulator merges across ranks by summing tensors with a Strategy's all_reduce. KID and precision/recall need
the features themselves; they use a bounded buffer of the first `limit` samples (samples are i.i.d., so the first
ones are a fair subset).
"""
from __future__ import annotations

import torch


def sum_over_ranks(tensor: torch.Tensor, strategy) -> torch.Tensor:
    """Sum a tensor over ranks (identity without a strategy or on one process)."""
    if strategy is None or getattr(strategy, "world_size", 1) == 1:
        return tensor
    return strategy.all_reduce(tensor, "sum")


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
            meta = sum_over_ranks(meta, strategy)
            counts = [int(c) for c in meta[:world].tolist()]
            dim, most = int(meta[world:].max()), max(counts)
            slots = torch.zeros(world, most, dim + 1, dtype=torch.float64)  # last column: global index
            if self.n:
                slots[rank, :self.n, :dim] = local.double()
                slots[rank, :self.n, dim] = index.double()
            slots = sum_over_ranks(slots, strategy)
            rows = torch.cat([slots[r, :counts[r]] for r in range(world)])
            local, index = rows[:, :dim].float(), rows[:, dim].long()
        return local[torch.argsort(index)]
