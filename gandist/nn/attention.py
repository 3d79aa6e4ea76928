"""Self-attention block of SAGAN (Zhang et al. 2019) as BigGAN uses it.

Keys and values are max-pooled 2x (4x fewer positions), query/key use C/8 channels and values C/2; the output is
added to the input through a learned `gamma` that starts at 0, so a fresh block is the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gandist.nn.spectral_norm import conv2d


class SelfAttention(nn.Module):
    """x + gamma * attention(x) over all spatial positions."""

    def __init__(self, channels: int, sn: bool = True, sn_eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = channels
        qk, v = max(channels // 8, 1), max(channels // 2, 1)
        self.theta = conv2d(channels, qk, 1, sn=sn, bias=False)
        self.phi = conv2d(channels, qk, 1, sn=sn, bias=False)
        self.g = conv2d(channels, v, 1, sn=sn, bias=False)
        self.o = conv2d(v, channels, 1, sn=sn, bias=False)
        for m in (self.theta, self.phi, self.g, self.o):
            if hasattr(m, "sn_eps"):
                m.sn_eps = sn_eps
        # shape [1], not a 0-dim scalar: DeepSpeed's engine views every parameter as bytes to broadcast it, which
        # a 0-dim tensor refuses (zero1/2/3 would not start)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # [N, C/8, HW]
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # [N, C/8, HW/4]
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # [N, C/2, HW/4]
        beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # [N, HW, HW/4]
        o = self.o((g @ beta.transpose(1, 2)).reshape(n, -1, h, w))
        return x + self.gamma * o
