"""Data sources that need no files: 2-D Gaussian mixtures and scikit-learn's bundled digits; plus an image folder.

Every source draws the *global* batch k from (seed, k) and hands rank r its slice, so the batch at step t is the
same whatever the world size (stylegan3 makes the same promise).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gandist.data.base import DataInfo, DataSource, DrawnBatches, rank_positions
from gandist.data.folders import IMAGE_SUFFIXES, list_image_folder, resize_and_centre_crop
from gandist.errors import UserError
from gandist.randomness import stream_seed


def toy2d_centres(mixture: str) -> tuple[torch.Tensor, float]:
    """(centres [K, 2], std) of a mixture: ring8 (radius 2, std 0.02) or grid25 ({-4,-2,0,2,4}^2, std 0.05)."""
    if mixture == "ring8":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return torch.stack([2 * angles.cos(), 2 * angles.sin()], 1).float(), 0.02
    if mixture == "grid25":
        ticks = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        return torch.cartesian_prod(ticks, ticks), 0.05
    raise UserError(f"data.mixture: unknown mixture {mixture!r} (use ring8 or grid25)")


class IndexedBatches(DrawnBatches):
    """Global batch k = fn(k, generator seeded by (seed, k)); this rank takes its rank_positions of it."""

    def __init__(self, make_global_batch, rank: int, world_size: int, global_batch: int, seed: int,
                 micro_batches: int = 1):
        self.positions = rank_positions(global_batch, rank, world_size, micro_batches)
        self.make_global_batch = make_global_batch
        self.global_batch, self.seed = global_batch, seed
        self.draw = 0

    def __next__(self):
        generator = torch.Generator().manual_seed(stream_seed(self.seed, "data", self.draw))
        x, y = self.make_global_batch(self.draw, self.global_batch, generator)
        self.draw += 1
        return x[self.positions], (y[self.positions] if y is not None else None)


class Toy2DSource(DataSource):
    """Mixture of 2-D Gaussians; labels are not used (unconditional)."""

    def __init__(self, cfg):
        self.centres, self.std = toy2d_centres(cfg.mixture)
        self.info = DataInfo(shape=(2,), num_classes=0, value_range=(-5.0, 5.0))

    def loader(self, rank, world_size, global_batch, seed, micro_batches=1):
        def make(_draw, n, generator):
            idx = torch.randint(len(self.centres), (n,), generator=generator)
            noise = torch.randn(n, 2, generator=generator) * self.std
            return self.centres[idx] + noise, None

        return IndexedBatches(make, rank, world_size, global_batch, seed, micro_batches)


class _PermutedImages(DataSource):
    """Images held in memory, drawn epoch by epoch in a seeded permutation (sampling without replacement)."""

    images: torch.Tensor  # [N, C, H, W] in [-1, 1]
    labels: torch.Tensor | None
    hflip: bool = False

    def _indices(self, start: int, n: int, seed: int) -> torch.Tensor:
        """Positions [start, start+n) of the endless stream of per-epoch permutations."""
        size = len(self.images)
        out = []
        while n > 0:
            epoch, offset = divmod(start, size)
            perm = torch.randperm(size, generator=torch.Generator().manual_seed(stream_seed(seed, "epoch", epoch)))
            take = min(n, size - offset)
            out.append(perm[offset:offset + take])
            start, n = start + take, n - take
        return torch.cat(out)

    def _load(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]

    def loader(self, rank, world_size, global_batch, seed, micro_batches=1):
        def make(draw, n, generator):
            idx = self._indices(draw * n, n, seed)
            x = self._load(idx)
            if self.hflip:
                flip = torch.rand(n, generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            return x, (self.labels[idx] if self.labels is not None else None)

        return IndexedBatches(make, rank, world_size, global_batch, seed, micro_batches)


def load_digits_tensor(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8x8 digits as [N, 1, R, R] in [-1, 1] (bilinear upsampling) and labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # pixel values are 0..16
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.contiguous(), torch.from_numpy(digits.target.astype(np.int64))


class DigitsSource(_PermutedImages):
    """scikit-learn's bundled digits, 10 classes."""

    def __init__(self, cfg):
        x, y = load_digits_tensor(cfg.resolution)
        if cfg.limit:  # small-data experiments (ADA): the first `limit` images, a fixed subset
            x, y = x[:cfg.limit], y[:cfg.limit]
        self.images = x.repeat(1, cfg.channels, 1, 1) if cfg.channels == 3 else x
        self.labels = y
        self.info = DataInfo(shape=tuple(self.images.shape[1:]), num_classes=10)


class FolderSource(_PermutedImages):
    """Images in a folder; classes are sub-folders (sorted names), or none when images lie directly in it."""

    def __init__(self, cfg):
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise UserError(f"data.path: folder {str(root)!r} not found (give a folder of images, class = sub-folder)")
        files, classes = list_image_folder(root, unlabelled=0)
        if not files:
            raise UserError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {str(root)!r}")
        self.files = [f for f, _ in files]
        self.classes = classes
        self.labels = torch.tensor([c for _, c in files]) if classes else None
        self.resolution, self.channels, self.hflip = cfg.resolution, cfg.channels, cfg.hflip
        self.images = self.files  # len() is all _indices needs
        self.info = DataInfo(shape=(cfg.channels, cfg.resolution, cfg.resolution), num_classes=len(classes))

    def _load(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([load_image(self.files[int(i)], self.resolution, self.channels) for i in idx])


def load_image(path: Path, resolution: int, channels: int) -> torch.Tensor:
    """Decode, resize the shorter side to `resolution`, centre-crop, scale to [-1, 1]: [C, R, R]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = resize_and_centre_crop(im.convert("L" if channels == 1 else "RGB"), resolution)
            arr = np.asarray(im, dtype=np.float32)
    except OSError as err:
        raise UserError(f"{path}: cannot decode image ({err}); remove or replace the file") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def build_source(cfg) -> DataSource:
    """The data source of a `data` config section."""
    from gandist.registry import SOURCES, resolve

    return resolve(SOURCES, cfg.kind, "data.kind")(cfg)
