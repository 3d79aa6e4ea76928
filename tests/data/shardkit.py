"""Helpers of the data tests: images that spell their own index."""
from __future__ import annotations

import numpy as np


def indexed_images(n: int) -> np.ndarray:
    """n 8x8 grey images whose pixels (0,0) and (0,1) spell the image's index."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    x[:, 0, 0] = np.arange(n) % 256
    x[:, 0, 1] = np.arange(n) // 256
    return x


def indices_of(x) -> list[int]:
    """The indices spelt by a batch of [-1, 1] images made by indexed_images (horizontal flips undone)."""
    pixels = ((x[:, 0] + 1.0) * 127.5).round().long()
    return [int(p[0, 0]) + 256 * int(p[0, 1]) for p in pixels]
