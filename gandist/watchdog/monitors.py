"""Monitors: fill the Signals record with top singular values per weight layer and the EMA-vs-G distance.

Spectrally normalized layers already run a power iteration in every training forward and keep the result in their
`sigma` buffer, so reading it costs nothing. Other weight layers get one power-iteration step every `sigma_every`
steps, keeping their vectors between calls (after a few calls the estimate is as good as SN's, at the price of one
mat-vec per layer per check). Values are 0-d device tensors: the loop's Signals.resolve() reads them all at once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gandist.nn.spectral_norm import spectral_norm_layers


def weight_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Layers with a matrix-shaped `weight` parameter (linear, conv, embedding), by qualified name."""
    out = {}
    for name, m in module.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 2 and w.numel() > 0:  # numel 0: a ZeRO-3 partition
            out[name] = m
    return out


def top_singular_value(weight: torch.Tensor, u: torch.Tensor, iterations: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Power-iteration estimate of the largest singular value of weight as [out, -1], and the updated left vector."""
    w = weight.detach().reshape(weight.shape[0], -1).float()
    for _ in range(iterations):
        v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
        u = F.normalize(w @ v, dim=0, eps=1e-12)
    return torch.dot(u, w @ v), u


class SigmaMonitor:
    """Top singular value of every weight layer of a net: SN buffers each step, power iteration every k steps."""

    def __init__(self, every: int) -> None:
        self.every = every
        # per module: its SN layers and the other layers with a `weight` parameter, found once (walking every
        # module each step was a measurable part of the watchdog's cost: tools/bench/overhead.py); the shape checks
        # of weight_layers stay per step (a ZeRO-3 partition is empty outside `gathered`)
        self._layers: dict[int, tuple[nn.Module, dict, dict]] = {}
        self._u: dict[str, torch.Tensor] = {}  # power-iteration vectors of plain layers, kept between checks
        self._last: dict[str, torch.Tensor] = {}  # last measurement of plain layers, reported between checks

    def measure(self, prefix: str, module: nn.Module, step: int) -> dict[str, torch.Tensor]:
        """{'<prefix>/<layer>': sigma} for every weight layer of `module`, as 0-d tensors on its device."""
        out: dict[str, torch.Tensor] = {}
        cached = self._layers.get(id(module))
        if cached is None or cached[0] is not module:
            sn = spectral_norm_layers(module)
            plain = {n: m for n, m in module.named_modules()
                     if n not in sn and isinstance(getattr(m, "weight", None), nn.Parameter)}
            cached = self._layers[id(module)] = (module, sn, plain)
        _, sn, plain = cached
        for name, layer in sn.items():
            out[f"{prefix}/{name}"] = layer.sigma.detach().clone()  # the buffer changes in the next forward
        check = step % self.every == 0
        for name, layer in plain.items():
            if layer.weight.dim() < 2 or layer.weight.numel() == 0:  # as weight_layers
                continue
            key = f"{prefix}/{name}"
            if check or key not in self._last:
                self._last[key] = self._power_step(key, layer.weight)
            out[key] = self._last[key]
        return out

    def _power_step(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        rows = weight.shape[0]
        u = self._u.get(key)
        if u is None or u.shape[0] != rows or u.device != weight.device:
            generator = torch.Generator().manual_seed(rows * 7919 + weight.numel())  # same start on every rank
            u = F.normalize(torch.randn(rows, generator=generator), dim=0).to(weight.device)
            iterations = 3  # a cold start needs a few steps; warm starts need one
        else:
            iterations = 1
        with torch.no_grad():
            sigma, self._u[key] = top_singular_value(weight, u, iterations)
        return sigma

    def reset(self) -> None:
        """Forget last measurements (after a rollback the weights changed); vectors stay as good warm starts."""
        self._last.clear()


def ema_distance(G: nn.Module, G_ema: nn.Module) -> torch.Tensor | None:
    """||EMA - G|| / ||G|| (a 0-d tensor) over parameters both hold with the same shape; None when none match."""
    ema_params = dict(G_ema.named_parameters())
    diffs, norms = [], []
    with torch.no_grad():
        for name, p in G.named_parameters():
            q = ema_params.get(name)
            if q is None or q.shape != p.shape or p.numel() == 0:
                continue
            diffs.append((q.detach().float() - p.detach().float()).pow(2).sum())
            norms.append(p.detach().float().pow(2).sum())
        if not diffs:
            return None
        # on the device: read with the rest of the step's signals, not one sync per parameter
        diff_sq, norm_sq = torch.stack(diffs).sum().double(), torch.stack(norms).sum().double()
    return diff_sq.sqrt() / norm_sq.sqrt().clamp_min(1e-12)
