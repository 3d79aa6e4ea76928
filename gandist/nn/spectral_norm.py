"""Spectral normalization (Miyato et al. 2018) computed inside each layer's forward.

Why not torch.nn.utils.parametrizations.spectral_norm: the watchdog needs each layer's current top singular value
and its power-iteration vectors (`sigma`, `u`, `v` buffers here), and ZeRO-3 gathers a module's *own* parameters
around its forward, so the weight must be a direct parameter of the layer that normalizes it (a parametrization keeps
it in a child module, where ZeRO-3 may see it partitioned).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def _fp32(w: torch.Tensor):
    """Autocast switched off on w's device (a no-op context on the meta device, which has no autocast)."""
    return contextlib.nullcontext() if w.is_meta else torch.autocast(w.device.type, enabled=False)


class SpectralNormMixin:
    """Adds W / sigma(W) with `power_iterations` steps per training forward. Buffers: u, v, sigma."""

    def _init_sn(self, power_iterations: int = 1, eps: float = 1e-6) -> None:
        weight = self.weight
        rows = weight.shape[0]
        cols = weight.numel() // rows
        self.power_iterations = power_iterations
        self.sn_eps = eps
        if weight.is_meta:  # shape-only build (parameter counts, FLOP estimates): no values to draw
            u, v = torch.empty(rows, device="meta"), torch.empty(cols, device="meta")
        else:
            generator = torch.Generator().manual_seed(rows * 7919 + cols)  # deterministic init, same on every rank
            u = F.normalize(torch.randn(rows, generator=generator), dim=0, eps=eps).to(weight.device)
            v = F.normalize(torch.randn(cols, generator=generator), dim=0, eps=eps).to(weight.device)
        self.register_buffer("u", u.to(weight.dtype))
        self.register_buffer("v", v.to(weight.dtype))
        self.register_buffer("sigma", torch.ones((), dtype=weight.dtype, device=weight.device))

    def weight_matrix(self) -> torch.Tensor:
        """The weight as [out, in*k*k] (for embeddings: [num_embeddings, dim]^T so rows are outputs)."""
        return self.weight.reshape(self.weight.shape[0], -1)

    def normalized_weight(self) -> torch.Tensor:
        """W / sigma after `power_iterations` steps of the power method (stored only in training mode)."""
        w = self.weight_matrix()
        with torch.no_grad(), _fp32(w):  # power iteration in fp32 always
            # eval mode iterates too but keeps the buffers (as BigGAN-PyTorch): a fresh layer's random u, v would
            # give u.Wv near 0 (or negative) and blow the weight up, e.g. when sampling before the first step
            u, v = self.u.clone(), self.v.clone()  # copies: later forwards update the buffers before backward
            for _ in range(self.power_iterations):
                v = F.normalize(w.t().float() @ u.float(), dim=0, eps=self.sn_eps).to(w.dtype)
                u = F.normalize(w.float() @ v.float(), dim=0, eps=self.sn_eps).to(w.dtype)
            if self.training:
                self.u.copy_(u)
                self.v.copy_(v)
        with _fp32(w):  # sigma in fp32 even under bf16/fp16 autocast
            sigma = torch.dot(u.float(), w.float() @ v.float())  # differentiable in w, vectors fixed (the paper)
        if self.training:
            with torch.no_grad():
                self.sigma.copy_(sigma.detach())
        return self.weight / sigma.clamp_min(self.sn_eps)


class SNLinear(SpectralNormMixin, nn.Linear):
    """nn.Linear with spectral normalization."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, power_iterations: int = 1,
                 eps: float = 1e-6) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_sn(power_iterations, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class SNConv2d(SpectralNormMixin, nn.Conv2d):
    """nn.Conv2d with spectral normalization."""

    def __init__(self, *args, power_iterations: int = 1, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_sn(power_iterations, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class SNEmbedding(SpectralNormMixin, nn.Embedding):
    """nn.Embedding with spectral normalization (BigGAN's projection D embeds classes this way)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, power_iterations: int = 1, eps: float = 1e-6) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self._init_sn(power_iterations, eps)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.embedding(y, self.normalized_weight())


def spectral_norm_layers(module: nn.Module) -> dict[str, SpectralNormMixin]:
    """Every spectrally normalized layer below `module`, by qualified name."""
    return {name: m for name, m in module.named_modules() if isinstance(m, SpectralNormMixin)}


def linear(in_f: int, out_f: int, sn: bool, bias: bool = True, eps: float = 1e-6) -> nn.Module:
    """A linear layer, spectrally normalized when `sn`."""
    return SNLinear(in_f, out_f, bias=bias, eps=eps) if sn else nn.Linear(in_f, out_f, bias=bias)


def conv2d(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, sn: bool = False,
           bias: bool = True, eps: float = 1e-6) -> nn.Module:
    """A conv layer, spectrally normalized when `sn`."""
    if sn:
        return SNConv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias, eps=eps)
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias)


def embedding(num: int, dim: int, sn: bool, eps: float = 1e-6) -> nn.Module:
    """An embedding, spectrally normalized when `sn`."""
    return SNEmbedding(num, dim, eps=eps) if sn else nn.Embedding(num, dim)
