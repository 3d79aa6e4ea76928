"""The data interface: a source describes its samples and hands each rank an iterator of batches.

World-size invariance: synthetic sources build the *global* batch of draw k from (seed, k) and give rank r its slice
[r*b, (r+1)*b), so changing the number of ranks does not change what the model sees.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator

import torch

from gandist.errors import UserError


@dataclass(frozen=True)
class DataInfo:
    """Shape and labels of a source's samples."""

    shape: tuple[int, ...]  # (2,) for toy2d, (C, H, W) for images
    num_classes: int = 0  # 0: unlabelled
    value_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


class BatchIterator(ABC):
    """Endless iterator of this rank's batches (x [b, ...] float, y [b] long or None) with a resumable position."""

    skipped_samples: int = 0  # corrupt samples skipped so far (streaming sources)

    def __iter__(self) -> Iterator:
        return self

    @abstractmethod
    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    @abstractmethod
    def state_dict(self) -> dict:
        """Position, so that a resume continues rather than replays."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    @staticmethod
    def merge_rank_states(states: list[dict]) -> dict:
        """The one state a resume at another world size loads, from every rank's state_dict() of one checkpoint
        (gathered by the checkpointer): rank 0's, for sources whose position is the same on every rank."""
        return states[0]

    def close(self) -> None:
        """Stop worker processes."""


class DrawnBatches(BatchIterator):
    """A BatchIterator whose position is the number of global batches drawn (batch k from a seed of (seed, k))."""

    draw: int = 0

    def state_dict(self) -> dict:
        return {"draw": self.draw}

    def load_state_dict(self, state: dict) -> None:
        self.draw = int(state["draw"])


def micro_batch_size(global_batch: int, world_size: int, accumulation: int) -> int:
    """Samples per rank per micro-batch; the one check that the global batch divides into ranks x micro-batches."""
    if global_batch % (world_size * accumulation):
        raise UserError(f"train.batch_size {global_batch} is not divisible by world size {world_size} x "
                        f"optim.accumulation {accumulation}; choose a multiple of {world_size * accumulation}")
    return global_batch // (world_size * accumulation)


def rank_positions(global_batch: int, rank: int, world_size: int, micro_batches: int = 1) -> torch.Tensor:
    """Positions in the global batch that `rank` trains on, micro-batch-major.

    Global micro-batch i is always samples [i*B/A, (i+1)*B/A), whatever the world size W; rank r takes the r-th of
    its W equal parts. Rank-major slicing ([r*B/W, (r+1)*B/W) split into A pieces) would put different samples
    together in a micro-batch at each world size, and cross-replica BN would then see different batch statistics.
    """
    part = micro_batch_size(global_batch, world_size, micro_batches)
    starts = [micro_batch_start(global_batch, rank, world_size, micro_batches, i) for i in range(micro_batches)]
    return torch.cat([torch.arange(start, start + part) for start in starts])


def micro_batch_start(global_batch: int, rank: int, world_size: int, micro_batches: int, micro: int) -> int:
    """Position in the global batch of the first sample of `rank`'s micro-batch `micro` (the layout above; the
    loop's latent noise uses it too, so that samples and their noise stay together at every world size)."""
    return micro * (global_batch // micro_batches) + rank * (global_batch // (world_size * micro_batches))


class DataSource(ABC):
    """Built from the `data` config section."""

    info: DataInfo

    @abstractmethod
    def loader(self, rank: int, world_size: int, global_batch: int, seed: int,
               micro_batches: int = 1) -> BatchIterator:
        """This rank's iterator: batches of global_batch // world_size samples, laid out as `micro_batches`
        consecutive micro-batches (see rank_positions)."""

    def real_samples(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n samples for evaluation (reference statistics)."""
        it = self.loader(0, 1, n, seed)
        try:
            return next(it)
        finally:
            it.close()
