"""Reading WebDataset tar shards over fsspec: URL expansion, raw samples with retries and skip counting, decoding.

The webdataset library parses the tar streams (member iteration, grouping files into samples, brace expansion).
Faults (missing, corrupt or truncated shard, undecodable image, transient read errors after `retries` retries with
backoff) skip the sample or shard with a warning naming the URL and are counted; stream.py decides the order the
shards are read in and stops a run whose skips exceed its budget.
"""
from __future__ import annotations

import logging
import tarfile
import time
from typing import Iterator

import numpy as np
import torch

from gandist.data.folders import resize_and_centre_crop
from gandist.errors import DataStreamError

log = logging.getLogger("gandist.data")


def expand_urls(pattern: str, storage_options: dict) -> list[str]:
    """Shard URLs of a brace pattern (`train-{000000..000127}.tar`, several joined by `::`) or a glob (`*.tar`)."""
    import fsspec
    from webdataset.shardlists import expand_urls as wds_expand

    urls: list[str] = []
    for url in wds_expand(pattern):
        if any(c in url for c in "*?["):
            fs, path = fsspec.core.url_to_fs(url, **storage_options)
            protocol = url.split("://")[0] + "://" if "://" in url else ""
            urls += [protocol + p if protocol and not p.startswith(protocol) else p for p in sorted(fs.glob(path))]
        else:
            urls.append(url)
    return urls


def _is_transient(err: BaseException) -> bool:
    """Network-ish errors worth retrying; a missing file, a bad tar or a permission problem is not."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, tarfile.TarError, ValueError)):
        return False
    if isinstance(err, (OSError, ConnectionError, TimeoutError)):
        return True
    module = type(err).__module__ or ""
    return module.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3", "requests"))


class ShardReader:
    """Reads raw samples of shards with retries; counts what it had to skip."""

    def __init__(self, storage_options: dict, retries: int, backoff: float, expected: dict[str, int]):
        self.storage_options = storage_options
        self.retries, self.backoff = retries, backoff
        self.expected = expected  # url -> sample count from the manifest
        self.skipped = 0
        self.seen = 0

    def _skip_shard(self, url: str, read: int, why: str) -> None:
        lost = max(1, self.expected.get(url, read + 1) - read)
        self.skipped += lost
        self.seen += lost
        log.warning("data: skipping %s (%s): %d sample(s) counted as skipped", url, why, lost)

    def samples(self, url: str) -> Iterator[dict]:
        """Raw samples ({'__key__', '__url__', ext: bytes}) of one shard; faults end the shard early."""
        import fsspec
        from webdataset.tariterators import group_by_keys, tar_file_expander

        read, attempt = 0, 0
        while True:
            try:
                with fsspec.open(url, "rb", **self.storage_options) as stream:
                    position = 0
                    for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                        position += 1
                        if position <= read:  # already handed out before a retry
                            continue
                        read += 1
                        self.seen += 1
                        yield sample
                break
            except Exception as err:  # noqa: BLE001 - classified below; unknown errors are re-raised
                if _is_transient(err) and attempt < self.retries:
                    delay = self.backoff * 2**attempt
                    attempt += 1
                    log.warning("data: %s: transient error (%s), retry %d/%d in %.1fs", url, type(err).__name__,
                                attempt, self.retries, delay)
                    time.sleep(delay)
                    continue
                if isinstance(err, FileNotFoundError):
                    self._skip_shard(url, read, "missing")
                elif isinstance(err, (tarfile.TarError, ValueError, EOFError)) or _is_transient(err):
                    self._skip_shard(url, read, f"{type(err).__name__}: {str(err)[:120]}")
                else:
                    raise
                return
        expected = self.expected.get(url)
        if expected is not None and read < expected:
            self._skip_shard(url, read, f"truncated: {read} of {expected} samples in the manifest")
        elif expected is not None and read > expected:
            raise DataStreamError(f"{url}: holds {read} samples but its manifest says {expected}; the manifest "
                                  "disagrees with the shards (rewrite them with `gandist data shards`)")


class Decoder:
    """Raw sample -> (image [C, R, R] float in [-1, 1], label); undecodable images count as skipped."""

    def __init__(self, cfg):
        self.keys = [k.strip().lower() for k in cfg.image_key.split(";") if k.strip()]
        self.resolution, self.channels, self.num_classes = cfg.resolution, cfg.channels, cfg.num_classes

    def __call__(self, sample: dict, first_in_shard: bool) -> tuple[torch.Tensor, int] | None:
        import io

        from PIL import Image

        url = sample.get("__url__", "?")
        key = next((k for k in self.keys if k in sample), None)
        if key is None or (self.num_classes and "cls" not in sample):
            wanted = ";".join(self.keys) if key is None else "cls (data.num_classes > 0)"
            found = sorted(k for k in sample if not k.startswith("__"))
            if first_in_shard:  # every sample lacks it: the config and the shards disagree
                raise DataStreamError(f"{url}: sample {sample['__key__']!r} has no {wanted} key (it has "
                                      f"{', '.join(found)}); set data.image_key / data.num_classes to match the shards")
            log.warning("data: %s: sample %r lacks %s; skipped", url, sample["__key__"], wanted)
            return None
        label = 0
        if self.num_classes:
            try:
                label = int(sample["cls"].decode().strip())
            except (UnicodeDecodeError, ValueError):
                log.warning("data: %s: sample %r has an unreadable .cls; skipped", url, sample["__key__"])
                return None
            if not 0 <= label < self.num_classes:
                raise DataStreamError(f"{url}: sample {sample['__key__']!r} has class {label}, outside "
                                      f"data.num_classes={self.num_classes}; raise data.num_classes")
        try:
            with Image.open(io.BytesIO(sample[key])) as im:
                im = resize_and_centre_crop(im.convert("L" if self.channels == 1 else "RGB"), self.resolution)
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for bad bytes
            log.warning("data: %s: sample %r: cannot decode image (%s); skipped", url, sample["__key__"], err)
            return None
        x = torch.from_numpy(arr.copy())
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        return x, label
