"""Human outputs: image grids and toy2d scatter plots as PNG (written atomically)."""
from __future__ import annotations

import io
import math

import numpy as np
import torch

from gandist.fileio import atomic_write_bytes


def image_grid_png(images: torch.Tensor, nrow: int | None = None, value_range=(-1.0, 1.0)) -> bytes:
    """[N, C, H, W] in value_range -> PNG bytes of a grid (1-px gaps), deterministic for equal input."""
    from PIL import Image

    x = images.detach().float().cpu()
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.zeros(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = x[i]
    arr = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    mode = "L" if c == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if c == 1 else arr[:, :, :3], mode).save(buf, format="PNG")
    return buf.getvalue()


def scatter_png(points: torch.Tensor, centres: torch.Tensor | None = None, title: str = "") -> bytes:
    """A 2-D scatter of samples with the mode centres marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    p = points.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5, color="tab:blue", label="samples")
    if centres is not None:
        c = centres.cpu().numpy()
        ax.scatter(c[:, 0], c[:, 1], s=40, marker="x", color="tab:red", label="modes")
    lim = max(4.5, float(np.abs(p).max()) if p.size and np.isfinite(p).all() else 4.5)
    lim = min(lim, 10.0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def save_png(path: str, data: bytes) -> None:
    """Write PNG bytes atomically."""
    atomic_write_bytes(path, data)
