"""Adversarial losses. Each takes D's logits ([N]) and returns a scalar mean over the batch.

One class per `loss.kind` (names: gandist/registry.py's LOSSES), each with `d(cfg, real, fake)`, `g(cfg, fake, real)`
and `needs_real_in_g` (whether G's loss compares with D's logits on real samples). A loss that uses a statistic of
the batch (`uses_batch_mean`) also takes `batch_mean`: the strategy's mean over every rank's micro-batch, so that the
statistic does not depend on the number of ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gandist.objectives.config import LossConfig
from gandist.registry import LOSSES, resolve


class NonSaturating:
    """Logistic loss; G maximizes log D(G(z)) (Goodfellow et al. 2014), optional one-sided label smoothing."""

    needs_real_in_g = False

    @staticmethod
    def d(cfg: LossConfig, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        target = 1.0 - cfg.label_smoothing
        return F.binary_cross_entropy_with_logits(real, torch.full_like(real, target)) + F.softplus(fake).mean()

    @staticmethod
    def terms(cfg: LossConfig, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-logit D loss as if real and as if fake (d() is the mean of the first on reals plus the second)."""
        target = torch.full_like(logits, 1.0 - cfg.label_smoothing)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none"), F.softplus(logits)

    @staticmethod
    def g(cfg: LossConfig, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        return F.softplus(-fake).mean()


class Hinge:
    """Hinge loss (Lim & Ye 2017; SAGAN, BigGAN)."""

    needs_real_in_g = False

    @staticmethod
    def d(cfg: LossConfig, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    @staticmethod
    def terms(cfg: LossConfig, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-logit D loss as if real and as if fake."""
        return F.relu(1 - logits), F.relu(1 + logits)

    @staticmethod
    def g(cfg: LossConfig, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        return -fake.mean()


class Wasserstein(Hinge):
    """WGAN critic loss (Arjovsky et al. 2017; pair it with a gradient penalty or weight clipping); G as hinge."""

    @staticmethod
    def d(cfg: LossConfig, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return fake.mean() - real.mean()

    @staticmethod
    def terms(cfg: LossConfig, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-logit D loss as if real and as if fake."""
        return -logits, logits


class LeastSquares:
    """LSGAN (Mao et al. 2017) with targets real 1, fake 0."""

    needs_real_in_g = False

    @staticmethod
    def d(cfg: LossConfig, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (((real - 1) ** 2).mean() + (fake ** 2).mean())

    @staticmethod
    def terms(cfg: LossConfig, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-logit D loss as if real and as if fake."""
        return 0.5 * (logits - 1) ** 2, 0.5 * logits ** 2

    @staticmethod
    def g(cfg: LossConfig, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        return 0.5 * ((fake - 1) ** 2).mean()


class RelativisticAverage:
    """RaGAN (Jolicoeur-Martineau 2019): each logit is compared with the mean logit of the other set, taken over
    the micro-batch on every rank (`batch_mean`), not each rank's share of it."""

    needs_real_in_g = True
    uses_batch_mean = True

    @staticmethod
    def d(cfg: LossConfig, real: torch.Tensor, fake: torch.Tensor, batch_mean=torch.mean) -> torch.Tensor:
        real, fake = real - batch_mean(fake), fake - batch_mean(real)
        if cfg.relativistic_base == "ls":
            return 0.5 * (((real - 1) ** 2).mean() + ((fake + 1) ** 2).mean())  # targets +-1, not LSGAN's 1/0
        return resolve(LOSSES, cfg.relativistic_base, "loss.relativistic_base").d(cfg, real, fake)

    @staticmethod
    def g(cfg: LossConfig, fake: torch.Tensor, real: torch.Tensor | None = None,
          batch_mean=torch.mean) -> torch.Tensor:
        if real is None:
            raise ValueError("loss.kind=relativistic needs D's logits on real samples in the G phase")
        real, fake = real.detach() - batch_mean(fake), fake - batch_mean(real.detach())
        base = cfg.relativistic_base
        if base == "ns":
            return F.softplus(real).mean() + F.softplus(-fake).mean()
        if base == "hinge":
            return F.relu(1 + real).mean() + F.relu(1 - fake).mean()
        return 0.5 * (((real + 1) ** 2).mean() + ((fake - 1) ** 2).mean())


def d_loss(cfg: LossConfig, real: torch.Tensor, fake: torch.Tensor, batch_mean=torch.mean) -> torch.Tensor:
    """D's loss given logits on real and fake samples (batch_mean: see the module docstring)."""
    loss = resolve(LOSSES, cfg.kind, "loss.kind")
    if getattr(loss, "uses_batch_mean", False):
        return loss.d(cfg, real, fake, batch_mean=batch_mean)
    return loss.d(cfg, real, fake)


def g_loss(cfg: LossConfig, fake: torch.Tensor, real: torch.Tensor | None = None, batch_mean=torch.mean) -> torch.Tensor:
    """G's loss given logits on fake samples (and on real ones for the relativistic loss)."""
    loss = resolve(LOSSES, cfg.kind, "loss.kind")
    if getattr(loss, "uses_batch_mean", False):
        return loss.g(cfg, fake, real, batch_mean=batch_mean)
    return loss.g(cfg, fake, real)


def d_terms(cfg: LossConfig, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """D's per-logit loss as if each logit were real and as if fake (CutMix's per-pixel targets); the
    relativistic loss has none (it compares with a batch mean)."""
    return resolve(LOSSES, cfg.kind, "loss.kind").terms(cfg, logits)


def needs_real_in_g_phase(cfg: LossConfig) -> bool:
    """Relativistic losses compare with real logits in the G phase too."""
    return resolve(LOSSES, cfg.kind, "loss.kind").needs_real_in_g


def topk_count(topk, batch: int, images_seen: int) -> int:
    """Top-k's k for a global batch of `batch` logits: max(min_fraction, gamma^(images / kimg)) x batch, at least 1.

    It decays with images seen rather than epochs (a stream has none); images_seen is in the loop's checkpointed
    state, so k resumes exactly.
    """
    fraction = max(topk.min_fraction, topk.gamma ** (images_seen / (topk.kimg * 1000)))
    return max(1, int(fraction * batch))


def topk_g_loss(cfg: LossConfig, fake: torch.Tensor, all_fake: list[torch.Tensor], rank: int,
                images_seen: int) -> torch.Tensor:
    """G's loss over the k fakes D rates highest in the global batch (Sinha et al. 2020), this rank's share.

    all_fake: every rank's detached logits in rank order (their concatenation is the global micro-batch). The
    loss is world_size / k x the sum of this rank's selected per-sample losses: averaged over ranks (as data
    parallelism averages gradients) it is the mean over the global top k.
    """
    scores = torch.cat([t.float().flatten().cpu() for t in all_fake])
    k = topk_count(cfg.topk, scores.numel(), images_seen)
    start = sum(t.numel() for t in all_fake[:rank])
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[torch.topk(scores, k).indices] = True
    mine = chosen[start:start + fake.shape[0]].to(fake.device)
    if not bool(mine.any()):
        return fake.sum() * 0.0  # keeps the graph: data parallelism needs every rank to backpropagate
    return g_loss(cfg, fake[mine]) * (float(mine.sum()) * len(all_fake) / k)


def aux_class_loss(cfg: LossConfig, class_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ACGAN's auxiliary term: loss.aux_weight x cross-entropy of D's class head against the labels y."""
    return cfg.aux_weight * F.cross_entropy(class_logits.float(), y)
