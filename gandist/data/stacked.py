"""Stacked digits: three scikit-learn digits in the three colour channels, 1000 modes (Stacked-MNIST protocol).

Each sample draws three digit images independently and uniformly from the 1797 bundled digits; its label is
100*a + 10*b + c for the digits a, b, c in channels R, G, B. Like every gandist source, the *global* batch of draw k
comes from a generator seeded by (seed, k) and rank r takes its slice, so the data does not depend on world size.
"""
from __future__ import annotations

import numpy as np
import torch

from gandist.data.base import BatchIterator, DataInfo, DataSource, DrawnBatches, rank_positions
from gandist.data.sources import load_digits_tensor

NUM_MODES = 1000


def _seed(seed: int, draw: int) -> int:
    """A 63-bit seed per (seed, draw), stable across processes and Python runs."""
    from gandist.randomness import stream_seed

    return stream_seed(seed, "stacked_digits", draw)


class _StackedBatches(DrawnBatches):
    """Global batch k from (seed, k); this rank takes its rank_positions of it."""

    def __init__(self, source: "StackedDigitsSource", rank: int, world_size: int, global_batch: int, seed: int,
                 micro_batches: int = 1):
        self.positions = rank_positions(global_batch, rank, world_size, micro_batches)
        self.source, self.global_batch, self.seed, self.draw = source, global_batch, seed, 0

    def __next__(self):
        gen = torch.Generator().manual_seed(_seed(self.seed, self.draw))
        self.draw += 1
        idx = torch.randint(len(self.source.images), (self.global_batch, 3), generator=gen)
        return self.source.compose(idx[self.positions])


class StackedDigitsSource(DataSource):
    """Three random digits stacked as RGB channels; labels 100*a + 10*b + c (1000 classes)."""

    def __init__(self, cfg):
        self.images, self.digit_labels = load_digits_tensor(cfg.resolution)
        self.info = DataInfo(shape=(3, cfg.resolution, cfg.resolution), num_classes=NUM_MODES)

    def compose(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, 3, R, R] and labels [N] from digit indices [N, 3]."""
        x = self.images[idx].squeeze(2)  # [N, 3, 1, R, R] -> [N, 3, R, R]
        d = self.digit_labels[idx]
        return x, d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]

    def mode_probabilities(self) -> np.ndarray:
        """True probability of each of the 1000 modes: product of the per-channel digit frequencies."""
        freq = np.bincount(self.digit_labels.numpy(), minlength=10) / len(self.digit_labels)
        return np.einsum("a,b,c->abc", freq, freq, freq).reshape(-1)

    def loader(self, rank: int, world_size: int, global_batch: int, seed: int,
               micro_batches: int = 1) -> BatchIterator:
        return _StackedBatches(self, rank, world_size, global_batch, seed, micro_batches)
