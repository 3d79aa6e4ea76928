"""Write WebDataset tar shards + manifest.json from an image folder, scikit-learn's digits or an .npz to any fsspec URL.

A shard is built in memory with a fixed mtime, so the same input gives the same bytes and the same sha256: a rerun
after an interruption recognises finished shards by checksum and skips them. Each shard is written to a temporary
name and then moved into place, and manifest.json is written last, so a reader never takes half a shard for a whole
one. The manifest names each shard with its sample count and sha256, and the class names.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gandist.data.folders import IMAGE_SUFFIXES, list_image_folder, resize_and_centre_crop
from gandist.errors import UserError

log = logging.getLogger("gandist.data")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "gandist-shards/1"


@dataclass
class Sample:
    """One image (uint8 HxW or HxWxC) with its label (-1: none) and where it came from."""

    image: np.ndarray
    label: int
    origin: str


@dataclass
class WriteReport:
    """What a write did: shards written, shards already complete (skipped), samples and the manifest URL."""

    written: int
    skipped: int
    samples: int
    manifest_url: str
    pattern: str


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def digits_samples() -> tuple[Iterator[Sample], list[str], int]:
    """scikit-learn's bundled 1797 8x8 digits as uint8 images (pixel 0..16 -> 0..255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    gen = (Sample(images[i], int(digits.target[i]), f"digits[{i}]") for i in range(len(images)))
    return gen, [str(c) for c in range(10)], len(images)


def npz_samples(path: Path) -> tuple[Iterator[Sample], list[str], int]:
    """An .npz with `x` (N,H,W | N,H,W,C | N,C,H,W; uint8, or float in [0,1] or [-1,1]) and optional `y` labels."""
    with np.load(path) as data:
        if "x" not in data:
            raise UserError(f"{path}: no array named 'x' (found {', '.join(data.files) or 'none'}); save images as x=")
        x, y = data["x"], (data["y"] if "y" in data else None)
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # N,C,H,W -> N,H,W,C
    if x.ndim not in (3, 4):
        raise UserError(f"{path}: x has shape {x.shape}; expected N,H,W or N,H,W,C or N,C,H,W")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.min() < 0:
            x = (x + 1.0) / 2.0
        x = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if y is not None and len(y) != len(x):
        raise UserError(f"{path}: y has {len(y)} labels for {len(x)} images; they must match")
    classes = [str(c) for c in range(int(y.max()) + 1)] if y is not None and len(y) else []
    gen = (Sample(x[i], int(y[i]) if y is not None else -1, f"{path.name}[{i}]") for i in range(len(x)))
    return gen, classes, len(x)


def folder_samples(root: Path) -> tuple[Iterator[Sample], list[str], int]:
    """Images under `root`; class = sub-folder (sorted names), or unlabelled when images lie directly in it."""
    files, classes = list_image_folder(root, unlabelled=-1)
    if not files:
        raise UserError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found; give a folder of images")

    def gen() -> Iterator[Sample]:
        from PIL import Image

        for f, label in files:
            try:
                with Image.open(f) as im:
                    mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
                    yield Sample(np.asarray(im.convert(mode)), label, str(f.relative_to(root)))
            except OSError as err:
                log.warning("skipping %s: cannot decode image (%s)", f, err)

    return gen(), classes, len(files)


def open_source(src: str) -> tuple[Iterator[Sample], list[str], int]:
    """(samples, class names, count) of SRC: `digits`, a .npz file or an image folder."""
    if src == "digits":
        return digits_samples()
    path = Path(src).expanduser()
    if path.suffix == ".npz" and path.is_file():
        return npz_samples(path)
    if path.is_dir():
        return folder_samples(path)
    raise UserError(f"{src}: not found; give an image folder (class = sub-folder), an .npz file or 'digits'")


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def resize_center_crop(image: np.ndarray, resolution: int | None) -> np.ndarray:
    """Resize the shorter side to `resolution` (bicubic) and centre-crop a square; None keeps the image."""
    if resolution is None or image.shape[:2] == (resolution, resolution):
        return image
    from PIL import Image

    return np.asarray(resize_and_centre_crop(Image.fromarray(image), resolution))


def encode_image(image: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """PNG or JPEG bytes of a uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG")
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build_shard(samples: list[Sample], start_index: int, classes: list[str], fmt: str, resolution: int | None) -> bytes:
    """The bytes of one tar shard (fixed mtime, so equal input gives equal bytes)."""
    from webdataset import TarWriter

    buf = io.BytesIO()
    with TarWriter(buf, encoder=False, mtime=0, user="gandist", group="gandist") as tar:
        for i, sample in enumerate(samples):
            image = resize_center_crop(sample.image, resolution)
            record = {"__key__": f"{start_index + i:09d}", fmt: encode_image(image, fmt)}
            meta = {"index": start_index + i, "origin": sample.origin}
            if sample.label >= 0:
                record["cls"] = str(sample.label).encode()
                meta["class"] = sample.label
                if sample.label < len(classes):
                    meta["class_name"] = classes[sample.label]
            record["json"] = json.dumps(meta, sort_keys=True).encode()
            tar.write(record)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _sha256_of(fs, path: str) -> str | None:
    """sha256 of an existing file, or None when it does not exist."""
    try:
        with fs.open(path, "rb") as f:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()
    except FileNotFoundError:
        return None


def _batched(samples: Iterator[Sample], n: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def write_shards(
    src: str,
    dest_url: str,
    *,
    samples_per_shard: int = 1000,
    resolution: int | None = None,
    fmt: str = "png",
    prefix: str = "train",
    storage_options: dict | None = None,
    progress: bool = True,
) -> WriteReport:
    """Write SRC as tar shards `{prefix}-NNNNNN.tar` under DEST_URL plus manifest.json; skip shards already complete."""
    import fsspec
    from tqdm import tqdm

    if samples_per_shard < 1:
        raise UserError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if fmt not in ("png", "jpg"):
        raise UserError(f"--format must be png or jpg, got {fmt!r}")
    samples, classes, count = open_source(src)
    fs, root = fsspec.core.url_to_fs(dest_url.rstrip("/"), **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    num_shards = max(1, -(-count // samples_per_shard))
    names = [f"{prefix}-{i:06d}.tar" for i in range(num_shards)]
    shards, written, skipped, total = [], 0, 0, 0
    bar = tqdm(total=count, unit="img", desc=f"shards -> {dest_url}", disable=not progress)
    for index, batch in enumerate(_batched(samples, samples_per_shard)):
        data = build_shard(batch, total, classes, fmt, resolution)
        digest = hashlib.sha256(data).hexdigest()
        final = posixpath.join(root, names[index])
        if _sha256_of(fs, final) == digest:
            skipped += 1  # finished by an earlier, interrupted run
        else:
            tmp = posixpath.join(root, f".{names[index]}.partial")
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, final)
            written += 1
        shards.append({"name": names[index], "samples": len(batch), "sha256": digest, "bytes": len(data)})
        total += len(batch)
        bar.update(len(batch))
    bar.close()
    names = names[: len(shards)]  # a folder may lose undecodable files
    pattern = f"{prefix}-{{000000..{len(shards) - 1:06d}}}.tar"
    manifest = {
        "format": MANIFEST_FORMAT,
        "pattern": pattern,
        "shards": shards,
        "num_samples": total,
        "classes": classes,
        "image_ext": fmt,
        "resolution": resolution,
    }
    manifest_path = posixpath.join(root, MANIFEST)
    with fs.open(manifest_path, "w") as f:  # last: its presence means every shard it names is in place
        json.dump(manifest, f, indent=1)
    base = dest_url.rstrip("/")
    return WriteReport(written, skipped, total, f"{base}/{MANIFEST}", f"{base}/{pattern}")


def read_manifest(fs, directory: str) -> dict | None:
    """The manifest.json in `directory` of filesystem `fs`, or None when there is none."""
    path = posixpath.join(directory, MANIFEST)
    try:
        with fs.open(path, "r") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: manifest is not valid JSON ({err}); rewrite it with `gandist data shards`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise UserError(f"{path}: not a gandist shard manifest (no 'shards' list); "
                        "rewrite it with `gandist data shards`")
    return manifest


def verify_shards(url: str, storage_options: dict | None = None) -> list[str]:
    """Problems found comparing the shards under directory URL with its manifest (empty list: all agree)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url.rstrip("/"), **(storage_options or {}))
    manifest = read_manifest(fs, root)
    if manifest is None:
        return [f"{url.rstrip('/')}/{MANIFEST}: no manifest"]
    problems = []
    for shard in manifest["shards"]:
        path = posixpath.join(root, shard["name"])
        digest = _sha256_of(fs, path)
        if digest is None:
            problems.append(f"{path}: missing")
        elif digest != shard["sha256"]:
            problems.append(f"{path}: sha256 {digest[:12]}... differs from the manifest's {shard['sha256'][:12]}...")
    return problems
