"""Perceptual path length (Karras et al. 2019, StyleGAN; 2020, StyleGAN2), as stylegan2-ada's metrics compute it.

For pairs of latents (z0, z1) and t (0 at the path endpoints, sampling=end; uniform in [0, 1), sampling=full):
w space (StyleGAN2): w_t = lerp(mapping(z0), mapping(z1), t), images synthesis(w_t) and synthesis(w_{t+eps}) with
constant noise; z space (any other generator, or on request): z_t = slerp(z0, z1, t). The path length of a pair is
d(G(t), G(t + eps)) / eps^2 with d the LPIPS distance (a squared distance, so / eps^2 is the derivative's square);
PPL is the mean over the pairs between the 1st (numpy 'lower') and 99th ('higher') percentiles.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gandist.errors import UserError
from gandist.eval.lpips import downsample_to
from gandist.eval.streaming import FeatureBuffer


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of directions (stylegan2-ada's), with the norm interpolated linearly.

    stylegan2-ada returns unit vectors (its mapping normalizes z anyway); a DCGAN or BigGAN expects |z| ~ sqrt(dim),
    so the norm is lerped from |a| to |b| (for StyleGAN2 the mapping's normalization makes this identical)."""
    t = t.reshape(-1, *([1] * (a.dim() - 1)))
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na, b / nb
    d = (ua * ub).sum(-1, keepdim=True).clamp(-1, 1)
    p = t * torch.acos(d)
    c = ub - d * ua
    c = c / c.norm(dim=-1, keepdim=True)
    u = ua * torch.cos(p) + c * torch.sin(p)
    return u / u.norm(dim=-1, keepdim=True) * torch.lerp(na, nb, t)


def resolve_space(G, space: str) -> str:
    """'w' for a generator with mapping + synthesis (StyleGAN2), else 'z'; an explicit w on another G is an error."""
    has_w = callable(getattr(G, "mapping", None)) and callable(getattr(G, "synthesis", None))
    if space == "auto":
        return "w" if has_w else "z"
    if space == "w" and not has_w:
        raise UserError("eval.ppl_space=w needs a generator with a mapping network (model.arch=stylegan2); use z or auto")
    return space


def crop_face(images: torch.Tensor) -> torch.Tensor:
    """stylegan2-ada's PPL crop (ppl_zfull/wfull/zend/wend, FFHQ faces): rows 3/8..7/8, columns 2/8..6/8."""
    c = images.shape[2] // 8
    return images[:, :, c * 3: c * 7, c * 2: c * 6]


def _pair_images(G, z0, z1, t, y, space: str, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images at t and t + epsilon along the path from z0 to z1 (same class y at both ends)."""
    if space == "w":
        w0, w1 = G.mapping(torch.cat([z0, z1]), None if y is None else torch.cat([y, y])).chunk(2)
        tt = t.reshape(-1, *([1] * (w0.dim() - 1)))
        ws = torch.cat([torch.lerp(w0, w1, tt), torch.lerp(w0, w1, tt + epsilon)])
        images = G.synthesis(ws, noise_mode="const")
    else:
        zs = torch.cat([slerp(z0, z1, t), slerp(z0, z1, t + epsilon)])
        images = G(zs, None if y is None else torch.cat([y, y]))
    return images.float().chunk(2)


@torch.no_grad()
def path_lengths(G, distance, num: int, *, space: str = "auto", sampling: str = "end", epsilon: float = 1e-4,
                 crop: bool = False, batch_size: int = 64, seed: int = 0, strategy=None) -> torch.Tensor:
    """Per-pair path lengths [num] (the same on any number of ranks: batch j from (seed, j), rank j mod world)."""
    from gandist.randomness import stream_seed

    space = resolve_space(G, space)
    rank, world = (strategy.rank, strategy.world_size) if strategy is not None else (0, 1)
    device = next(G.parameters()).device
    buffer = FeatureBuffer(num)
    for j in range(math.ceil(num / batch_size)):
        if j % world != rank:
            continue
        n = min(batch_size, num - j * batch_size)
        gen = torch.Generator().manual_seed(stream_seed(seed, "ppl", j))
        z0, z1 = torch.randn(n, G.z_dim, generator=gen), torch.randn(n, G.z_dim, generator=gen)
        t = torch.rand(n, generator=gen) * (1.0 if sampling == "full" else 0.0)
        y = torch.randint(G.num_classes, (n,), generator=gen).to(device) if getattr(G, "num_classes", 0) else None
        img0, img1 = _pair_images(G, z0.to(device), z1.to(device), t.to(device), y, space, epsilon)
        if crop:
            img0, img1 = crop_face(img0), crop_face(img1)
        img0, img1 = downsample_to(img0), downsample_to(img1)
        buffer.update((distance(img0, img1).double() / epsilon ** 2)[:, None], j * batch_size)
    return buffer.gather(strategy).flatten()


def filtered_mean(lengths) -> float:
    """Mean of the path lengths between the 1st ('lower') and 99th ('higher') percentiles, as stylegan2-ada."""
    d = np.asarray(lengths, dtype=np.float64)
    lo = np.percentile(d, 1, method="lower")
    hi = np.percentile(d, 99, method="higher")
    return float(d[(d >= lo) & (d <= hi)].mean())
