"""Mode coverage, as the mode-collapse literature reports it (VEEGAN, PacGAN).

toy2d: each sample goes to its nearest mode centre; it is *high quality* when within 3 std of that centre. A mode is
*captured* when it holds at least `min_share` of its fair share (N/K) of high-quality samples (default 0.1: e.g.
>= 25 of 2500 samples on ring8), so a handful of stray points does not count as covering a mode. Reverse KL is
KL(q || p) between the histogram q of samples over modes (nearest centre) and the true mode probabilities p.

Stacked digits: a digit classifier labels each colour channel; the mode is 100*a + 10*b + c. A mode is captured
when at least one sample lands in it (the Stacked-MNIST protocol); reverse KL as above, over 1000 modes.
"""
from __future__ import annotations

import numpy as np
import torch


def reverse_kl(counts: np.ndarray, p: np.ndarray) -> float:
    """KL(q || p) with q = counts / sum(counts); terms with q = 0 contribute 0."""
    counts = np.asarray(counts, np.float64)
    p = np.asarray(p, np.float64)
    q = counts / max(counts.sum(), 1.0)
    mask = q > 0
    return float((q[mask] * np.log(q[mask] / p[mask])).sum())


def toy2d_coverage(samples: torch.Tensor, centres: torch.Tensor, std: float, min_share: float = 0.1) -> dict:
    """modes captured, high-quality share, reverse KL and the per-mode histogram of 2-D samples."""
    x = samples.detach().double().cpu()
    c = centres.double().cpu()
    k = len(c)
    dist = torch.cdist(x, c)
    nearest_dist, nearest = dist.min(1)
    high_quality = nearest_dist <= 3 * std
    counts_hq = torch.bincount(nearest[high_quality], minlength=k).numpy()
    counts_all = torch.bincount(nearest, minlength=k).numpy()
    threshold = max(1.0, min_share * len(x) / k)
    return {
        "modes": int((counts_hq >= threshold).sum()),
        "modes_total": k,
        "high_quality": float(high_quality.double().mean()),
        "reverse_kl": reverse_kl(counts_all, np.full(k, 1.0 / k)),
        "samples": len(x),
    }


def stacked_digits_coverage(digits: torch.Tensor, p: np.ndarray | None = None) -> dict:
    """modes captured (of 1000) and reverse KL from per-channel digit predictions [N, 3]."""
    modes = (digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]).long().cpu()
    counts = torch.bincount(modes, minlength=1000).numpy()
    p = np.full(1000, 1e-3) if p is None else p
    return {
        "modes": int((counts > 0).sum()),
        "modes_total": 1000,
        "reverse_kl": reverse_kl(counts, p),
        "samples": int(len(modes)),
    }
