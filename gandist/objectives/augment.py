"""Augmentations of D's inputs: DiffAugment, instance noise, PacGAN packing; and world-size-invariant randomness."""
from __future__ import annotations

import hashlib

import torch


def stream_seed(*parts) -> int:
    """A 63-bit seed from any tuple (seed, step, tag, ...): independent streams per phase and purpose."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class GlobalRandom:
    """Random draws for this rank's slice of the global batch.

    Draws are made for all `global_n` samples from a generator seeded by (seed, step, tag) and sliced at `offset`,
    so single-process training with batch 2b and two ranks with batch b see the same numbers.
    """

    def __init__(self, seed: int, step: int, tag: str, offset: int, global_n: int, device: torch.device | str = "cpu"):
        self.seed, self.step, self.tag = seed, step, tag
        self.offset, self.global_n = offset, global_n
        self.device = torch.device(device)
        self._calls = 0

    def _generator(self) -> torch.Generator:
        self._calls += 1  # each call gets its own stream, identical on every rank
        return torch.Generator().manual_seed(stream_seed(self.seed, self.step, self.tag, self._calls))

    def rand(self, n: int, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) of shape [n, *shape] for this rank's n samples."""
        full = torch.rand((self.global_n, *shape), generator=self._generator())
        return full[self.offset:self.offset + n].to(self.device)

    def randn(self, n: int, *shape: int) -> torch.Tensor:
        """Standard normal of shape [n, *shape] for this rank's n samples."""
        full = torch.randn((self.global_n, *shape), generator=self._generator())
        return full[self.offset:self.offset + n].to(self.device)
