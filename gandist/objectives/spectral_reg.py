"""Spectral regularization (SR-GAN, Liu et al. 2019): undo the spectral collapse of D's spectrally normalized layers.

The paper observes that when an SN-GAN mode-collapses, most singular values of D's weight matrices drop sharply
while sigma_1 stays (spectral collapse). Its remedy, applied after D's optimizer step every k iterations: with
W = U diag(s) V^T, W <- W + U diag(delta) V^T, delta_i = s_1 - s_i for i <= i0 and 0 beyond, i.e. the largest i0
singular values are lifted to sigma_1 and the tail is left alone. sigma_1 does not change, so spectral
normalization's W / sigma_1 keeps its Lipschitz bound. The reference code (max-liu-112/SRGANs) lifts the first half
of the spectrum (i0 = rank // 2) every 5 iterations, after each D update of that iteration; gandist's defaults.

Embeddings (a projection D's class embedding) are not weight matrices of a layer map and are left alone, as in the
reference code (conv layers only there; gandist also lifts SN linear layers).
"""
from __future__ import annotations

import torch
from torch import nn

from gandist.errors import ConfigError
from gandist.nn.spectral_norm import SNConv2d, SNLinear, spectral_norm_layers
from gandist.objectives.penalties import Penalty, PenaltyContext


def lifted_count(rank: int, fraction: float) -> int:
    """i0: how many of the largest singular values are lifted to sigma_1 (the reference: rank // 2)."""
    return int(rank * fraction)


@torch.no_grad()
def compensate_spectrum(matrix: torch.Tensor, fraction: float) -> torch.Tensor:
    """matrix + U diag(delta) V^T with delta_i = s_1 - s_i for the first i0 singular values (in float64)."""
    w = matrix.double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    i0 = lifted_count(len(s), fraction)
    if i0 < 2:  # only sigma_1 itself: nothing to lift
        return matrix.clone()
    delta = torch.zeros_like(s)
    delta[:i0] = s[0] - s[:i0]
    return (w + (u * delta) @ vh).to(matrix.dtype)


def lifted_layers(module: nn.Module) -> dict[str, nn.Module]:
    """D's spectrally normalized conv and linear layers (not embeddings), by name."""
    return {n: m for n, m in spectral_norm_layers(module).items() if isinstance(m, (SNConv2d, SNLinear))}


class SpectralReg(Penalty):
    """SR-GAN: every `every` G steps, after each D step, lift the top i0 singular values of D's SN layers to sigma_1.

    It adds no loss. Its `every` is not a lazy interval: it runs in D's main phase (self.every = 1, so the D lr is
    not rescaled as for a lazy penalty) and checks the step itself. The SVD runs in float64 on each weight's device;
    under ddp every rank holds the same weights after the step and computes the same result (no communication).
    """

    name = "spectral_reg"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.interval = int(cfg.every)
        self.every = 1  # not a lazy phase: see the class docstring
        self.fraction = float(cfg.fraction)

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        device = ctx.real.device if ctx.real is not None else "cpu"
        return torch.zeros((), device=device)

    @torch.no_grad()
    def after_step(self, module: nn.Module, step: int = 0) -> None:
        """At steps divisible by `every`: each SN conv/linear weight gets its compensated spectrum."""
        if step % self.interval:
            return
        for layer in lifted_layers(module).values():
            w = layer.weight
            layer.weight.copy_(compensate_spectrum(w.reshape(w.shape[0], -1), self.fraction).reshape(w.shape))

    @staticmethod
    def check_config(cfg, index: int) -> None:
        """Refuse, before a run dir is written, what cannot work: a D without spectral norm, ZeRO's master weights."""
        from gandist.strategies import strategy_class

        arch = cfg.model.arch
        if not (arch.startswith("biggan") or getattr(cfg.model, "spectral_norm", False)):
            raise ConfigError(f"penalties.{index}: spectral_reg compensates the spectra of D's spectrally normalized "
                              f"layers, and model.arch={arch} has none here; set model.spectral_norm=true (mlp, "
                              "dcgan, resnet) or use biggan, or drop spectral_reg")
        strategy = cfg.distributed.strategy
        if strategy_class(strategy).keeps_master_weights:
            raise ConfigError(f"penalties.{index}: spectral_reg rewrites D's module weights, which distributed."
                              f"strategy={strategy} overwrites from its optimizer's own fp32 copy (ZeRO-3 also holds "
                              "them partitioned); use distributed.strategy=ddp or single")
