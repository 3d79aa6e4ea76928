"""Progressive growing's schedule (ProGAN, Karras et al. 2018): resolution and fade-in alpha from images seen.

Nothing here is state: (resolution, alpha) is a function of the loop's images_seen, which the checkpoint holds, so a
run resumed mid-fade continues on the same alpha. Images travel at the data's resolution throughout, as in the
official progressive code (StyleGAN1's `lod`): G's output at resolution r is nearest-upsampled, and the real images
are faded the same way (average-pooled to r, blended with their r/2 version by 1 - alpha, upsampled), so that the
augmentations, penalties, strategies and evaluation see one shape; D average-pools its input back to r.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Level:
    resolution: int
    fade: int  # images fading in (0 for the first level)
    stable: int  # images at alpha 1
    lr_scale: float


class GrowthSchedule:
    """The levels of model.progressive from its start resolution to the data's `final` resolution."""

    def __init__(self, cfg, final: int):
        self.final, self.levels = final, []
        r = cfg.start_resolution
        while r <= final:
            over = cfg.levels.get(r)
            fade = cfg.fade_kimg if over is None or over.fade_kimg is None else over.fade_kimg
            stable = cfg.stable_kimg if over is None or over.stable_kimg is None else over.stable_kimg
            self.levels.append(Level(r, 0 if r == cfg.start_resolution else round(fade * 1000), round(stable * 1000),
                                     1.0 if over is None else over.lr_scale))
            r *= 2

    def at(self, images_seen: int) -> tuple[Level, float]:
        """The level being trained after `images_seen` images and its fade-in alpha in [0, 1]."""
        start = 0
        for level in self.levels:
            if images_seen < start + level.fade:
                return level, (images_seen - start) / level.fade
            if images_seen < start + level.fade + level.stable or level is self.levels[-1]:
                return level, 1.0
            start += level.fade + level.stable
        raise AssertionError("unreachable: the last level lasts forever")

    def fade_reals(self, x: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
        """Real images [N, C, R, R] as D sees them at `resolution` and `alpha`, back at R (nearest)."""
        if resolution == x.shape[-1] and alpha >= 1:
            return x
        low = F.avg_pool2d(x, x.shape[-1] // resolution)
        if alpha < 1:
            coarse = F.interpolate(F.avg_pool2d(low, 2), scale_factor=2, mode="nearest")
            low = torch.lerp(coarse, low, alpha)
        return F.interpolate(low, size=x.shape[-2:], mode="nearest")


class Growth:
    """What the loop does with the schedule each step: set the nets' level, fade reals, scale lr, reset Adam."""

    def __init__(self, cfg, final: int):
        self.cfg, self.schedule = cfg, GrowthSchedule(cfg, final)
        self.resolution, self.alpha = self.schedule.levels[0].resolution, 1.0

    def begin_step(self, images_seen: int, step_images: int, nets, strategy) -> None:
        """Set G, D and the EMA G to this step's level; a level that starts fading in may clear Adam."""
        level, alpha = self.schedule.at(images_seen)
        self.resolution, self.alpha = level.resolution, alpha
        for net in nets:
            if net is not None:
                net.set_growth(level.resolution, alpha)
        # the first step of a level: derived from images seen, so a resumed run resets at the same step
        previous = self.schedule.at(images_seen - step_images)[0] if images_seen >= step_images else level
        if self.cfg.reset_optim and previous.resolution != level.resolution:
            strategy.clear_optimizer_state()  # config validation asked clears_optimizer_state

    def lr_scale_at(self, images_seen: int) -> float:
        """model.progressive.levels' lr_scale of the level trained after `images_seen` images."""
        return self.schedule.at(images_seen)[0].lr_scale

    def fade_reals(self, x: torch.Tensor) -> torch.Tensor:
        return self.schedule.fade_reals(x, self.resolution, self.alpha)
