"""Adversarial losses. Each takes D's logits ([N]) and returns a scalar mean over the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gandist.objectives.config import LossConfig


def d_loss(cfg: LossConfig, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's loss given logits on real and fake samples."""
    kind = cfg.kind
    if kind == "relativistic":
        # RaGAN: compare each logit with the mean logit of the other set (Jolicoeur-Martineau 2019)
        real, fake = real - fake.mean(), fake - real.mean()
        kind = cfg.relativistic_base
        if kind == "ls":
            return 0.5 * (((real - 1) ** 2).mean() + ((fake + 1) ** 2).mean())
    if kind == "ns":
        target = 1.0 - cfg.label_smoothing
        real_term = F.binary_cross_entropy_with_logits(real, torch.full_like(real, target))
        return real_term + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wasserstein":
        return fake.mean() - real.mean()
    if kind == "ls":
        return 0.5 * (((real - 1) ** 2).mean() + (fake ** 2).mean())
    raise ValueError(f"loss.kind: unknown loss {cfg.kind!r}")


def g_loss(cfg: LossConfig, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """G's loss given logits on fake samples (and on real ones for the relativistic loss)."""
    kind = cfg.kind
    if kind == "relativistic":
        if real is None:
            raise ValueError("loss.kind=relativistic needs D's logits on real samples in the G phase")
        real, fake = real.detach() - fake.mean(), fake - real.detach().mean()
        base = cfg.relativistic_base
        if base == "ns":
            return F.softplus(real).mean() + F.softplus(-fake).mean()
        if base == "hinge":
            return F.relu(1 + real).mean() + F.relu(1 - fake).mean()
        return 0.5 * (((real + 1) ** 2).mean() + ((fake - 1) ** 2).mean())
    if kind == "ns":
        return F.softplus(-fake).mean()
    if kind in ("hinge", "wasserstein"):
        return -fake.mean()
    if kind == "ls":
        return 0.5 * ((fake - 1) ** 2).mean()
    raise ValueError(f"loss.kind: unknown loss {cfg.kind!r}")


def needs_real_in_g_phase(cfg: LossConfig) -> bool:
    """Relativistic losses compare with real logits in the G phase too."""
    return cfg.kind == "relativistic"
