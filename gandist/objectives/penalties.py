"""Regularizers of D and G. The loop adds `penalty.loss(ctx)` to the phase's loss (lazily every k steps, times k).

Interface (the loop relies on exactly this):
- `Penalty.name` (e.g. "r1"), `.net` ("D" or "G"), `.every` (k), `.weight`.
- `loss(ctx) -> Tensor`: the weighted scalar term (weight applied; the lazy factor k is applied by the loop).
- `after_step(module)`: called on the plain module of `net` after each optimizer step (weight clipping).
- `state_dict()` / `load_state_dict()`: running state (path-length mean) saved in checkpoints.
- `last_value`: float of the last unweighted value, for signals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from gandist.objectives.augment import GlobalRandom


@dataclass
class PenaltyContext:
    """What a penalty may use. D penalties get real/fake; G penalties get z/y and the generator."""

    step: int
    d_forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # D incl. augmentation and packing
    g_forward: Callable[..., torch.Tensor] | None = None  # wrapped G: (z, y) -> x
    G: nn.Module | None = None  # plain G (gathered under ZeRO-3): mapping/synthesis, weights for ortho
    D: nn.Module | None = None  # plain D
    real: torch.Tensor | None = None
    real_y: torch.Tensor | None = None
    fake: torch.Tensor | None = None  # detached fakes (D phase)
    fake_y: torch.Tensor | None = None
    z: torch.Tensor | None = None
    y: torch.Tensor | None = None
    rand: GlobalRandom | None = None


class Penalty:
    """Base class of a regularizer."""

    name: str = "penalty"
    net: str = "D"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.weight = float(cfg.weight)
        self.every = int(cfg.every)
        self.last_value = 0.0

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        """The weighted penalty term."""
        raise NotImplementedError

    def after_step(self, module: nn.Module) -> None:
        """Hook after an optimizer step of `self.net` (no-op by default)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_penalties(cfgs: list) -> list[Penalty]:
    """Penalty objects from the `penalties` config list."""
    return [PENALTIES[c.kind](c) for c in cfgs]


PENALTIES: dict[str, type[Penalty]] = {}
