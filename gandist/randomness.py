"""Randomness that does not depend on the world size, and the RNG states a checkpoint carries.

Every random draw of training (latents, fake labels, augmentations, penalty mixing, data order) comes from a
generator seeded by `stream_seed(seed, step, tag, ...)`; `GlobalRandom` draws for the whole global batch and slices
this rank's part, so one process with batch 2b and two ranks with batch b see the same numbers. The global RNGs
(torch, numpy, python) are saved per rank as tensors and plain types, since checkpoints load with weights_only=True.
"""
from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import torch


def stream_seed(*parts) -> int:
    """A 63-bit seed from any tuple (seed, step, tag, ...): independent streams per phase and purpose."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seed_step_rng(seed: int, device: torch.device) -> None:
    """Seed the global RNGs that model-internal noise on `device` draws from: CPU's, and that CUDA device's.

    Not torch.manual_seed: on a CPU-only build it also queues a lazy seed for CUDA, MTIA and XPU each call, and each
    queued call formats a Python traceback (2-3 ms per step on CPU, measured by tools/bench/overhead.py). The CPU
    generator gets the same seed as before, so CPU runs draw the same numbers.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()] \
            .manual_seed(seed)


class GlobalRandom:
    """Random draws for this rank's slice of the global batch.

    Draws are made for all `global_n` samples from a generator seeded by (seed, step, tag) and sliced at `offset`,
    so single-process training with batch 2b and two ranks with batch b see the same numbers. Large per-sample draws
    (image-sized noise) come from one stream per sample instead, so a rank never materializes the global batch's
    noise (3x1024x1024 x 64 samples would be 800 MB per call); that is world-size invariant as well.
    """

    PER_SAMPLE_STREAMS_FROM = 4096  # elements per sample from which each sample gets its own stream

    def __init__(self, seed: int, step: int, tag: str, offset: int, global_n: int, device: torch.device | str = "cpu"):
        self.seed, self.step, self.tag = seed, step, tag
        self.offset, self.global_n = offset, global_n
        self.device = torch.device(device)
        self._calls = 0

    def _generator(self, *sample: int) -> torch.Generator:
        return torch.Generator().manual_seed(stream_seed(self.seed, self.step, self.tag, self._calls, *sample))

    def _draw(self, fn, n: int, shape: tuple[int, ...]) -> torch.Tensor:
        self._calls += 1  # each call gets its own stream, identical on every rank
        if math.prod(shape) >= self.PER_SAMPLE_STREAMS_FROM:
            rows = [fn(shape, generator=self._generator(i)) for i in range(self.offset, self.offset + n)]
            return torch.stack(rows).to(self.device)
        full = fn((self.global_n, *shape), generator=self._generator())
        return full[self.offset:self.offset + n].to(self.device)

    def rand(self, n: int, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) of shape [n, *shape] for this rank's n samples."""
        return self._draw(torch.rand, n, shape)

    def randn(self, n: int, *shape: int) -> torch.Tensor:
        """Standard normal of shape [n, *shape] for this rank's n samples."""
        return self._draw(torch.randn, n, shape)


def rng_state() -> dict:
    """Every RNG's state as tensors and plain types (checkpoints are loaded with weights_only=True)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return plain_rng_state(state)


def plain_rng_state(state: dict) -> dict:
    """numpy's get_state() tuple and python's getstate() tuple as a dict of tensors / lists of ints."""
    out = dict(state)
    if isinstance(state["numpy"], tuple):
        kind, keys, pos, has_gauss, cached = state["numpy"]
        # MT19937's 624 uint32 words, held as int64 so that any torch can read them back
        out["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
                        "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    version, internal, gauss_next = state["python"]
    out["python"] = [int(version), [int(v) for v in internal], gauss_next]
    return out


def set_rng_state(state: dict) -> None:
    """Restore rng_state()'s output (a format-1 numpy tuple and python tuple are accepted too)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = np.asarray(numpy_state["keys"].numpy() if torch.is_tensor(numpy_state["keys"]) else numpy_state["keys"])
        numpy_state = (numpy_state["kind"], keys.astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"],
                       numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
