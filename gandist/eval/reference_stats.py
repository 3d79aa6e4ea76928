"""Reference statistics computed once over a whole dataset (`gandist eval stats`), and reused by evaluations.

StyleGAN2-ADA's fid50k_full convention: every image of the dataset, no flips, in file order. The .npz holds mu,
sigma and n as pytorch-fid's precomputed statistics do, plus `key`: a JSON record of what the statistics depend on
(data identity, resolution, resize mode, feature network and its weights' sha256). A file whose key differs from
the evaluation's is refused with a one-line error naming the differing field: never silently recomputed.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from gandist.errors import UserError
from gandist.eval.fid import FeatureStats
from gandist.fileio import atomic_write_bytes

KEY_FIELDS = ("data", "resolution", "resize", "features", "features_sha256")


def state_sha256(net: torch.nn.Module) -> str:
    """sha256 over a network's state (sorted names, shapes and float32 bytes): names the weights, file or not."""
    digest = hashlib.sha256()
    for name, value in sorted(net.state_dict().items()):
        digest.update(f"{name}:{tuple(value.shape)}".encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(net: torch.nn.Module) -> str:
    """The sha256 a feature network's results are keyed by (its weight file's when it was read from one)."""
    return getattr(net, "weights_sha256", None) or state_sha256(net)


def data_identity(data_cfg) -> str:
    """What makes two datasets the same: kind and selection, and for a folder its path and file list (names, sizes)."""
    if data_cfg.kind == "digits":
        return f"digits(limit={data_cfg.limit},channels={data_cfg.channels})"
    if data_cfg.kind == "folder":
        from gandist.data.folders import list_image_folder

        root = Path(data_cfg.path).expanduser().resolve()
        if not root.is_dir():
            raise UserError(f"data.path: folder {str(root)!r} not found")
        files, _ = list_image_folder(root, unlabelled=0)
        digest = hashlib.sha256()
        for f, label in files:
            digest.update(f"{f.relative_to(root)}\0{f.stat().st_size}\0{label}\n".encode())
        return f"folder({root},channels={data_cfg.channels},files={len(files)},list_sha256={digest.hexdigest()[:16]})"
    raise UserError(f"eval stats: data.kind {data_cfg.kind!r} has no fixed set of images to sum over; "
                    f"use a digits or folder dataset (shards: point a folder source at the images)")


def stats_key(data_cfg, net: torch.nn.Module, resize: str) -> dict:
    """The record reference statistics are keyed by."""
    return {"data": data_identity(data_cfg), "resolution": int(data_cfg.resolution),
            "resize": resize if net.name == "inception" else "digits_native", "features": net.name,
            "features_sha256": weights_sha256(net)}


def key_digest(key: dict) -> str:
    """Short hash of a key (the default cache file name)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def default_stats_path(key: dict) -> Path:
    """Where `gandist eval stats` caches statistics without --out: $GANDIST_CACHE/stats/<key hash>.npz."""
    from gandist.eval.features import default_cache_dir

    return default_cache_dir() / "stats" / f"{key_digest(key)}.npz"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def dataset_stats(source, net: torch.nn.Module, batch_size: int = 250, device="cpu",
                  progress: bool = False) -> FeatureStats:
    """Feature statistics of every image of an in-memory or folder source, in index order, without flips."""
    if not hasattr(source, "_load") or not hasattr(source, "images"):
        raise UserError("eval stats: this data source cannot be read image by image; use digits or a folder")
    total = len(source.images)
    stats = FeatureStats(net.feature_dim)
    batches = range(math.ceil(total / batch_size))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="reference statistics", unit="batch", file=sys.stderr)
    net = net.to(device)
    for b in batches:
        idx = torch.arange(b * batch_size, min(total, (b + 1) * batch_size))
        features, _ = net(source._load(idx).to(device))  # _load: no hflip, that is applied by the loader only
        stats.update(features)
    return stats


def save_stats(path: str | Path, stats: FeatureStats, key: dict) -> str:
    """Write mu, sigma, n and the key as .npz atomically; returns the file's sha256."""
    mu, sigma = stats.mean_cov()
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma, n=np.int64(stats.n), key=np.array(json.dumps(key, sort_keys=True)))
    atomic_write_bytes(path, buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def read_key(path: str | Path) -> dict | None:
    """The key stored in a statistics file (None for a file without one, e.g. pytorch-fid's)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["key"])) if "key" in data.files else None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a statistics .npz ({type(err).__name__}); recreate it with `gandist eval stats`") from None


def key_mismatch(stored: dict | None, expected: dict) -> str | None:
    """A one-line description of the first field that differs (None when they agree)."""
    if stored is None:
        return "the file records no key (not written by `gandist eval stats`)"
    for field in KEY_FIELDS:
        if stored.get(field) != expected.get(field):
            return f"{field} is {stored.get(field)!r} in the file, {expected.get(field)!r} here"
    return None


class StoredStats:
    """Reference statistics read from a checked file: mean_cov() like FeatureStats, plus path and sha256."""

    def __init__(self, path: str | Path, expected_key: dict, what: str = "eval.reference_stats"):
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"{what}: {path} not found; create it with `gandist eval stats DATA --out {path}`")
        problem = key_mismatch(read_key(path), expected_key)
        if problem:
            raise UserError(f"{what}: {path} was computed for other settings ({problem}); recompute it with "
                            f"`gandist eval stats` for these settings or point {what} at the matching file")
        with np.load(path, allow_pickle=False) as data:
            self.mu, self.sigma, self.n = data["mu"], data["sigma"], int(data["n"])
        self.path, self.sha256 = str(path), file_sha256(path)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) as stored."""
        return self.mu, self.sigma
