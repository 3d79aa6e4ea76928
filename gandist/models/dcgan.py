"""DCGAN-style conv nets for 8-64 px images: BN in G, SN in D, class conditioning by embedding (G) and projection (D)."""
from __future__ import annotations

import math

import torch
from torch import nn

from gandist.models.base import BuildContext, class_heads, d_output, small_image_pair_dims
from gandist.nn.cross_replica_bn import batch_norm
from gandist.nn.spectral_norm import conv2d, embedding, linear


def _stages(resolution: int) -> int:
    stages = int(math.log2(resolution)) - 2
    if resolution < 8 or 2 ** (stages + 2) != resolution:
        raise ValueError(f"model: resolution {resolution} is not supported by dcgan/resnet (use 8, 16, 32 or 64)")
    return stages


class DCGANGenerator(nn.Module):
    """z [N, z_dim] (+ class embedding) -> 4x4 -> upsampling convs -> tanh image [N, C, R, R]."""

    def __init__(self, z_dim: int, ch: int, resolution: int, channels: int, num_classes: int, bn_group=None):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        stages = _stages(resolution)
        width = ch * 2 ** (stages - 1)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        # no bias before a batch norm: BN cancels it, and Adam would turn its zero-mean gradient noise into steps
        self.fc = nn.Linear(z_dim, width * 16, bias=False)
        self.bn0 = batch_norm(width * 16, bn_group, dims=1)
        blocks: list[nn.Module] = []
        for _ in range(stages):
            out = max(ch, width // 2)
            blocks += [nn.Upsample(scale_factor=2), nn.Conv2d(width, out, 3, padding=1, bias=False),
                       batch_norm(out, bn_group),
                       nn.ReLU()]
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(width, channels, 3, padding=1)
        self.width = ch * 2 ** (stages - 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        h = z * truncation
        if self.embed is not None and y is not None:
            h = h + self.embed(y)
        h = torch.relu(self.bn0(self.fc(h))).view(len(z), self.width, 4, 4)
        return torch.tanh(self.to_image(self.blocks(h)))


class DCGANDiscriminator(nn.Module):
    """Strided convs down to 4x4, then a linear logit plus the projection term <embed(y), h> when conditional."""

    def __init__(self, ch: int, resolution: int, channels: int, num_classes: int, sn: bool, cfg=None):
        super().__init__()
        stages = _stages(resolution)
        layers: list[nn.Module] = [conv2d(channels, ch, 3, padding=1, sn=sn), nn.LeakyReLU(0.2)]
        width = ch
        for _ in range(stages):
            layers += [conv2d(width, width * 2, 4, stride=2, padding=1, sn=sn), nn.LeakyReLU(0.2)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.fc = linear(width * 16, 1, sn)
        self.embed, self.aux = class_heads(cfg, num_classes, width * 16, lambda k, w: embedding(k, w, sn),
                                           lambda w, k: linear(w, k, sn))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, return_class: bool = False):
        h = self.features(x).flatten(1)
        return d_output(self.fc, self.embed, self.aux, h, y, return_class)


def build(cfg, info, ctx: BuildContext):
    """DCGAN pair for images of shape (C, R, R)."""
    classes, c, res, d_channels = small_image_pair_dims(cfg, info, ctx)
    return (DCGANGenerator(cfg.z_dim, cfg.ch, res, c, classes, ctx.bn_process_group),
            DCGANDiscriminator(cfg.ch, res, d_channels, classes if ctx.pack == 1 else 0, cfg.spectral_norm,
                               cfg))
