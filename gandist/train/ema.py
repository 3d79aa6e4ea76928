"""Exponential moving average of G's weights; buffers (BN running statistics, SN vectors) are copied, not averaged."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_ema(G: nn.Module) -> nn.Module:
    """A frozen copy of G in eval mode."""
    ema = copy.deepcopy(G).eval()
    ema.requires_grad_(False)
    return ema


def ramped_decay(decay: float, batch: int, images_seen: int, rampup: float | None) -> float:
    """The EMA decay of this step under stylegan2-ada's ema_rampup: the half-life in images is decay's own,
    batch * ln(0.5) / ln(decay), capped at rampup * images_seen, so early G steps are averaged over a short past.
    Without rampup (or with decay 0) it is decay."""
    if not rampup or decay <= 0:
        return decay
    half_life = batch * math.log(0.5) / math.log(decay)
    ramped = min(half_life, images_seen * rampup)
    return 0.5 ** (batch / ramped) if ramped > 0 else 0.0


@torch.no_grad()
def update_ema(ema: nn.Module, G: nn.Module, decay: float, step: int, start_step: int) -> None:
    """ema = decay*ema + (1-decay)*G after start_step (a plain copy before it); buffers always copied."""
    d = decay if step >= start_step else 0.0
    for p_ema, p in zip(ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().to(p_ema.dtype).lerp(p_ema, d))
    for b_ema, b in zip(ema.buffers(), G.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def relative_distance(ema: nn.Module, G: nn.Module) -> float:
    """||EMA - G|| / ||G|| over all parameters (how far the average lags)."""
    # one host sync for the whole net (two per parameter drained a GPU's queue a hundred times per log step)
    diff = torch.stack([(a - b).double().pow(2).sum() for a, b in zip(ema.parameters(), G.parameters())]).sum()
    norm = torch.stack([b.double().pow(2).sum() for b in G.parameters()]).sum()
    diff, norm = torch.stack([diff, norm]).tolist()
    return (diff / max(norm, 1e-12)) ** 0.5


def step_ema(ema: nn.Module, strategy, cfg, batch: int, images_seen: int, step: int) -> None:
    """The loop's EMA update after a G step: G's full weights (gathered under ZeRO-3) at train.ema's ramped decay."""
    with strategy.gathered("G") as G_full:
        update_ema(ema, G_full, ramped_decay(cfg.decay, batch, images_seen, cfg.rampup), step, cfg.start_step)
