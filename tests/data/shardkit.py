"""Helpers of the data tests: images that spell their own index, and the fake S3 credentials."""
from __future__ import annotations

import numpy as np

# The moto S3 server's credentials: fake, and spelt distinctively so that a test can grep run dirs and logs for them
FAKE_KEY_ID = "GANDISTFAKEKEYID0042"
FAKE_SECRET = "gandistFakeSecret/DoNotLog+0042"


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
