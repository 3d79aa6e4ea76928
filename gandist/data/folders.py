"""Image folders as the shard writer and the `folder` source read them, and the resize both apply (no torch here:
the writer CLI stays quick)."""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def list_image_folder(root: Path, unlabelled: int) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image files with their labels, class names) of a folder: class = sub-folder (sorted names, images found
    recursively), or every image directly in `root` labelled `unlabelled` when it has no sub-folders."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        return [(f, unlabelled) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES], []
    return [(f, label) for label, name in enumerate(classes)
            for f in sorted((root / name).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES], classes


def resize_and_centre_crop(im, resolution: int):
    """A PIL image with its shorter side resized (bicubic) to `resolution`, centre-cropped to R x R."""
    from PIL import Image

    if im.size == (resolution, resolution):
        return im
    w, h = im.size
    scale = resolution / min(w, h)
    im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))
