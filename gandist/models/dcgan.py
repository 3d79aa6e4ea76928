"""DCGAN-style conv nets for 8-64 px images: BN in G, SN in D, class conditioning by embedding (G) and projection (D)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gandist.models.base import BuildContext, class_heads, d_activation, d_output, small_image_pair_dims
from gandist.nn.cross_replica_bn import batch_norm
from gandist.nn.spectral_norm import conv2d, embedding, linear


def _stages(resolution: int) -> int:
    stages = int(math.log2(resolution)) - 2
    if resolution < 8 or 2 ** (stages + 2) != resolution:
        raise ValueError(f"model: resolution {resolution} is not supported by dcgan/resnet (use 8, 16, 32 or 64)")
    return stages


class DCGANGenerator(nn.Module):
    """z [N, z_dim] (+ class embedding) -> 4x4 -> upsampling convs -> tanh image [N, C, R, R]."""

    def __init__(self, z_dim: int, ch: int, resolution: int, channels: int, num_classes: int, bn_group=None,
                 grow: bool = False):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        stages = _stages(resolution)
        width = ch * 2 ** (stages - 1)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        # no bias before a batch norm: BN cancels it, and Adam would turn its zero-mean gradient noise into steps
        self.fc = nn.Linear(z_dim, width * 16, bias=False)
        self.bn0 = batch_norm(width * 16, bn_group, dims=1)
        blocks: list[nn.Module] = []
        widths = []
        for _ in range(stages):
            out = max(ch, width // 2)
            blocks += [nn.Upsample(scale_factor=2), nn.Conv2d(width, out, 3, padding=1, bias=False),
                       batch_norm(out, bn_group),
                       nn.ReLU()]
            width = out
            widths.append(out)
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(width, channels, 3, padding=1)
        self.width = ch * 2 ** (stages - 1)
        # progressive growing: an RGB head after every stage below the last (which has to_image)
        self.to_rgbs = nn.ModuleList([nn.Conv2d(w, channels, 3, padding=1) for w in widths[:-1]]) if grow else None
        self.growth = (resolution, 1.0)

    def set_growth(self, resolution: int, alpha: float) -> None:
        """Progressive growing: output `resolution` (faded in by alpha), nearest-upsampled to the full size."""
        self.growth = (int(resolution), float(alpha))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        h = z * truncation
        if self.embed is not None and y is not None:
            h = h + self.embed(y)
        h = torch.relu(self.bn0(self.fc(h))).view(len(z), self.width, 4, 4)
        if self.to_rgbs is None:
            return torch.tanh(self.to_image(self.blocks(h)))
        return self._grown(h)

    def _grown(self, h: torch.Tensor) -> torch.Tensor:
        (res, alpha), last = self.growth, len(self.to_rgbs)
        k = int(math.log2(res)) - 3  # the stage whose output is `res` px
        rgb = [*self.to_rgbs, self.to_image]
        prev = h
        for i in range(k + 1):
            prev, h = h, self.blocks[4 * i:4 * i + 4](h)
        img = torch.tanh(rgb[k](h))
        if alpha < 1 and k > 0:  # ProGAN's fade-in: the previous level's image, upsampled, blended out
            img = torch.lerp(F.interpolate(torch.tanh(rgb[k - 1](prev)), scale_factor=2), img, alpha)
        return img if k == last else F.interpolate(img, scale_factor=2 ** (last - k))


class DCGANDiscriminator(nn.Module):
    """Strided convs down to 4x4, then a linear logit plus the projection term <embed(y), h> when conditional."""

    def __init__(self, ch: int, resolution: int, channels: int, num_classes: int, sn: bool, cfg=None,
                 grow: bool = False):
        super().__init__()
        stages = _stages(resolution)
        self.stages = stages
        dropout = getattr(cfg, "d_dropout", 0.0)  # model.d_dropout: after each hidden activation
        layers: list[nn.Module] = [conv2d(channels, ch, 3, padding=1, sn=sn), d_activation(dropout)]
        width = ch
        for _ in range(stages):
            layers += [conv2d(width, width * 2, 4, stride=2, padding=1, sn=sn), d_activation(dropout)]
            width *= 2
        self.features = nn.Sequential(*layers)
        # progressive growing: an input conv for each lower resolution (the full one's is features[0])
        self.from_rgbs = nn.ModuleList([nn.Sequential(conv2d(channels, ch * 2 ** m, 3, padding=1, sn=sn),
                                                      d_activation(dropout)) for m in range(1, stages)]) if grow else None
        self.growth = (resolution, 1.0)
        self.fc = linear(width * 16, 1, sn)
        self.embed, self.aux = class_heads(cfg, num_classes, width * 16, lambda k, w: embedding(k, w, sn),
                                           lambda w, k: linear(w, k, sn))

    def freeze_blocks(self) -> list[nn.Module]:
        """FreezeD's blocks, input side first: the input conv, then each strided conv."""
        return list(self.features)[::2]

    def set_growth(self, resolution: int, alpha: float) -> None:
        """Progressive growing: judge images at `resolution` (average-pooled from the input), alpha fading in."""
        self.growth = (int(resolution), float(alpha))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, return_class: bool = False):
        h = (self.features(x) if self.from_rgbs is None else self._grown(x)).flatten(1)
        return d_output(self.fc, self.embed, self.aux, h, y, return_class)


    def _grown(self, x: torch.Tensor) -> torch.Tensor:
        res, alpha = self.growth
        m = int(math.log2(x.shape[-1] // res))  # stages already skipped at this resolution
        x = F.avg_pool2d(x, 2 ** m) if m else x
        from_rgb = [self.features[0:2], *self.from_rgbs]
        h = self.features[2 + 2 * m:4 + 2 * m](from_rgb[m](x))
        if alpha < 1 and m + 1 < self.stages:  # ProGAN's fade-in: the coarser path, blended out
            h = torch.lerp(from_rgb[m + 1](F.avg_pool2d(x, 2)), h, alpha)
        return self.features[4 + 2 * m:](h)


def build(cfg, info, ctx: BuildContext):
    """DCGAN pair for images of shape (C, R, R)."""
    classes, c, res, d_channels = small_image_pair_dims(cfg, info, ctx)
    grow = cfg.progressive.enabled
    return (DCGANGenerator(cfg.z_dim, cfg.ch, res, c, classes, ctx.bn_process_group, grow),
            DCGANDiscriminator(cfg.ch, res, d_channels, classes if ctx.pack == 1 else 0, cfg.spectral_norm,
                               cfg, grow))
