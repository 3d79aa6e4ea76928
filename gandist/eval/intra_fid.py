"""Intra-FID (Miyato & Koyama 2018, cGANs with projection discriminator): FID per class, then the mean.

Class c compares G(z, c) for `per_class` seeded latents with every real image labelled c (no flips), one class at a
time, so memory stays one feature covariance whatever the number of classes. Batches are numbered globally over
(class, batch) and processed by rank j mod world size; the statistics are summed across ranks.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gandist.errors import UserError
from gandist.eval.fid import FeatureStats, frechet_distance


def check_intra_fid(source, num_classes_g: int | None = None) -> int:
    """The number of classes; a clear error when the data (or G) has no labels to condition on."""
    labels = getattr(source, "labels", None)
    classes = source.info.num_classes
    if not classes or labels is None or not hasattr(source, "_load"):
        raise UserError("eval.metrics: intra_fid needs labelled data held as images (digits, or a folder with one "
                        "sub-folder per class) and a conditional generator")
    if num_classes_g is not None and num_classes_g != classes:
        raise UserError(f"eval.metrics: intra_fid needs a generator conditioned on the data's {classes} classes, "
                        f"this one has {num_classes_g or 'no'} classes (model.conditional / d_conditioning)")
    return classes


@torch.no_grad()
def intra_fid(G, source, net, *, per_class: int, batch_size: int, seed: int, truncation: float = 1.0,
              strategy=None) -> dict:
    """{'intra_fid': mean over classes, 'intra_fid_per_class': [FID of class c]}."""
    from gandist.randomness import stream_seed

    classes = check_intra_fid(source, getattr(G, "num_classes", 0))
    rank, world = (strategy.rank, strategy.world_size) if strategy is not None else (0, 1)
    device = next(G.parameters()).device
    kwargs = {"truncation": truncation} if truncation != 1.0 else {}
    j = 0  # global batch counter over all classes, real then generated
    per_class_fid = []
    for c in range(classes):
        real_idx = torch.nonzero(source.labels == c).flatten()
        if len(real_idx) < 2:
            raise UserError(f"intra_fid: class {c} has {len(real_idx)} real images; FID needs at least 2")
        real, fake = FeatureStats(net.feature_dim), FeatureStats(net.feature_dim)
        for start in range(0, len(real_idx), batch_size):
            if j % world == rank:
                real.update(net(source._load(real_idx[start:start + batch_size]).to(device))[0])
            j += 1
        for b in range(math.ceil(per_class / batch_size)):
            if j % world == rank:
                n = min(batch_size, per_class - b * batch_size)
                gen = torch.Generator().manual_seed(stream_seed(seed, "intra-z", c, b))
                z = torch.randn(n, G.z_dim, generator=gen).to(device)
                y = torch.full((n,), c, dtype=torch.long, device=device)
                fake.update(net(G(z, y, **kwargs).float())[0])
            j += 1
        real.all_reduce(strategy)
        fake.all_reduce(strategy)
        per_class_fid.append(frechet_distance(*real.mean_cov(), *fake.mean_cov()))
    return {"intra_fid": float(np.mean(per_class_fid)), "intra_fid_per_class": per_class_fid}
