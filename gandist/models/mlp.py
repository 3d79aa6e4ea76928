"""MLP generator and discriminator for 2-D toy data (the PacGAN/VEEGAN set-up)."""
from __future__ import annotations

import torch
from torch import nn

from gandist.models.base import BuildContext, d_activation, packed_info
from gandist.nn.spectral_norm import linear


class MLPGenerator(nn.Module):
    """z [N, z_dim] -> x [N, *shape]."""

    def __init__(self, z_dim: int, hidden: int, depth: int, out_dim: int):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, 0
        layers: list[nn.Module] = []
        width = z_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        return self.net(z * truncation)


class MLPDiscriminator(nn.Module):
    """x [N, in_dim] -> logits [N]."""

    def __init__(self, in_dim: int, hidden: int, depth: int, sn: bool, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [linear(width, hidden, sn), d_activation(dropout)]
            width = hidden
        layers.append(linear(width, 1, sn))
        self.net = nn.Sequential(*layers)

    def freeze_blocks(self) -> list[nn.Module]:
        """FreezeD's blocks, input side first: the hidden linear layers (model.freeze_d freezes the first N)."""
        return list(self.net)[:-1:2]

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def build(cfg, info, ctx: BuildContext):
    """MLP pair for data of shape (d,)."""
    if info.is_image:
        raise ValueError("model.arch=mlp is for 2-D toy data; use dcgan, resnet, biggan or stylegan2 for images")
    d_info = packed_info(info, ctx.pack)
    return (MLPGenerator(cfg.z_dim, cfg.hidden, cfg.depth, info.shape[0]),
            MLPDiscriminator(d_info.shape[0], cfg.hidden, cfg.depth, cfg.spectral_norm, cfg.d_dropout))
