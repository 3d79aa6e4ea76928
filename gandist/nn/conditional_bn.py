"""Class-conditional batch norm (BigGAN): BN without affine, then a gain and bias predicted per sample.

The conditioning vector is either the shared class embedding concatenated with this block's chunk of z (hierarchical
latents; gain/bias are bias-free linear maps of it) or, without a shared embedding, the class index itself (gain/bias
are per-class embeddings). Gain is `1 + f(c)` so that a fresh layer is plain BN.
"""
from __future__ import annotations

import torch
from torch import nn

from gandist.nn.cross_replica_bn import batch_norm
from gandist.nn.spectral_norm import linear


class ConditionalBatchNorm2d(nn.Module):
    """BN(x) * (1 + gain(c)) + bias(c) with c a vector [N, cond_dim] or class indices [N] (num_classes mode)."""

    def __init__(self, num_features: int, cond_dim: int = 0, num_classes: int = 0, sn: bool = True,
                 eps: float = 1e-5, process_group=None) -> None:
        super().__init__()
        if (cond_dim > 0) == (num_classes > 0):
            raise ValueError("ConditionalBatchNorm2d needs exactly one of cond_dim > 0 or num_classes > 0")
        self.bn = batch_norm(num_features, process_group, affine=False, eps=eps)
        if cond_dim > 0:
            self.gain = linear(cond_dim, num_features, sn=sn, bias=False)
            self.bias = linear(cond_dim, num_features, sn=sn, bias=False)
        else:
            self.gain = nn.Embedding(num_classes, num_features)
            self.bias = nn.Embedding(num_classes, num_features)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gain = (1 + self.gain(c)).view(x.shape[0], -1, 1, 1)
        bias = self.bias(c).view(x.shape[0], -1, 1, 1)
        return self.bn(x) * gain + bias


class PlainBatchNorm2d(nn.Module):
    """BN with learned affine, taking (and ignoring) a conditioning input: the unconditional stand-in for CBN."""

    def __init__(self, num_features: int, eps: float = 1e-5, process_group=None) -> None:
        super().__init__()
        self.bn = batch_norm(num_features, process_group, affine=True, eps=eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.bn(x)
