"""CutMix consistency regularization of a U-Net D (Schonfeld et al. 2020, section 3.2).

With probability p(step) per D step (ramped linearly from 0 to `prob` over `warmup_steps`), each real image of the
batch is mixed with the fake beside it through a CutMix mask M (1: the real image's pixels, 0: a box of the fake's):
mix = M * real + (1 - M) * fake. D is trained on the mix as follows, all in this penalty's term:
- the global output calls the mix fake (loss.kind's per-logit fake term);
- the per-pixel output has target M (loss.kind's per-logit real term where M = 1, fake term where M = 0);
- consistency: weight * mean (D_dec(mix) - (M * D_dec(real) + (1 - M) * D_dec(fake)))^2, the per-pixel outputs on
  real and fake being the D phase's own (graph kept: both sides are trained, as in bCR).
The coin is drawn once per D step for the whole global batch and the masks per sample, from the step's
world-size-invariant streams; p is a function of the step, so the warm-up has no state and resumes exactly.
"""
from __future__ import annotations

import torch

from gandist.errors import ConfigError
from gandist.objectives.penalties import Penalty, PenaltyContext
from gandist.randomness import stream_seed


def cutmix_mask(uniform: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """CutMix masks [N, 1, H, W] from uniform draws [N, 3] (lambda, box centre y, box centre x): a box of side
    sqrt(1 - lambda) x the image's, clipped at the border, is 0 (the fake's pixels); the rest is 1 (the real's)."""
    lam, cy, cx = uniform[:, 0:1], uniform[:, 1:2], uniform[:, 2:3]
    side = (1 - lam).sqrt()
    h, w = torch.round(side * height), torch.round(side * width)
    top, left = torch.round(cy * height - h / 2), torch.round(cx * width - w / 2)
    y0, x0 = top.clamp(0, height), left.clamp(0, width)
    y1, x1 = (top + h).clamp(0, height), (left + w).clamp(0, width)
    ys = torch.arange(height, device=uniform.device, dtype=uniform.dtype)
    xs = torch.arange(width, device=uniform.device, dtype=uniform.dtype)
    in_y = (ys >= y0) & (ys < y1)  # [N, H]
    in_x = (xs >= x0) & (xs < x1)  # [N, W]
    box = in_y[:, :, None] & in_x[:, None, :]
    return (~box).to(uniform.dtype)[:, None]


def consistency(mixed_pixels: torch.Tensor, real_pixels: torch.Tensor, fake_pixels: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """mean (D_dec(mix) - (M * D_dec(real) + (1 - M) * D_dec(fake)))^2 over pixels and samples; pixels [N, H, W]."""
    m = mask[:, 0]
    return (mixed_pixels - (m * real_pixels + (1 - m) * fake_pixels)).square().mean()


class CutMix(Penalty):
    """U-Net GAN's CutMix augmentation and consistency term on D (`weight`: the consistency's lambda)."""

    name = "cutmix"

    def probability(self, step: int) -> float:
        """p(step): linear from 0 at step 0 to cfg.prob at cfg.warmup_steps, then constant."""
        ramp = 1.0 if self.cfg.warmup_steps == 0 else min(1.0, step / self.cfg.warmup_steps)
        return self.cfg.prob * ramp

    def applies(self, ctx: PenaltyContext) -> bool:
        """This D step's coin: the same on every rank and micro-batch (seeded by step and phase, not by offset)."""
        rand = ctx.rand
        gen = torch.Generator().manual_seed(stream_seed(rand.seed, rand.step, rand.tag, "cutmix"))
        return float(torch.rand((), generator=gen)) < self.probability(ctx.step)

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        self._need(ctx, "real", "fake", "rand", "d_pixels", "d_terms", "real_pixels", "fake_pixels")
        if not self.applies(ctx):
            return ctx.real_pixels.sum() * 0.0  # keeps the graph: every rank backpropagates the same pieces
        real, fake = ctx.real.detach(), ctx.fake.detach().to(ctx.real.dtype)
        mask = cutmix_mask(ctx.rand.rand(real.shape[0], 3).to(real.device), real.shape[-2], real.shape[-1]).to(real)
        logits, pixels = ctx.d_pixels(mask * real + (1 - mask) * fake, ctx.fake_y)
        logits, pixels = logits.float(), pixels.float()
        m = mask[:, 0].float()
        as_real, as_fake = ctx.d_terms(pixels)
        mix_loss = ctx.d_terms(logits)[1].mean() + (m * as_real + (1 - m) * as_fake).mean()
        cons = consistency(pixels, ctx.real_pixels.float(), ctx.fake_pixels.float(), mask.float())
        return mix_loss + self.weight * cons

    @staticmethod
    def check_config(cfg, index: int) -> None:
        """What cannot work: no per-pixel output, a lazy interval, a relativistic loss, pixel-moving augmentation."""
        p = cfg.penalties[index]
        if cfg.model.arch != "unet":
            raise ConfigError(f"penalties.{index}: cutmix regularizes a U-Net D's per-pixel output, which "
                              f"model.arch={cfg.model.arch} does not have; use model.arch=unet or drop cutmix")
        if p.every > 1:
            raise ConfigError(f"penalties.{index}: cutmix uses the D phase's own per-pixel outputs and has no lazy "
                              f"form (every: {p.every}); set every: 1 or drop the key")
        if cfg.loss.kind == "relativistic":
            raise ConfigError(f"penalties.{index}: cutmix's per-pixel targets need a per-logit loss, and loss.kind="
                              "relativistic compares with batch means; use loss.kind=hinge, ns, ls or wasserstein")
        moving = [n for n in ("translation", "cutout") if n in cfg.augment.diffaugment]
        ada = cfg.augment.ada
        if moving or (ada is not None and any(g in ada.pipeline for g in ("blit", "geom"))):
            what = (f"augment.diffaugment={cfg.augment.diffaugment!r}" if moving
                    else f"augment.ada.pipeline={ada.pipeline!r}")
            raise ConfigError(f"penalties.{index}: cutmix's mask must stay aligned with D's input, and {what} moves "
                              "pixels; keep only color augmentation or drop cutmix")
