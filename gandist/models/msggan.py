"""MSG-GAN (Karnewar and Wang 2020): G emits an image at every scale (4 px up to the data's), D takes the pyramid and
concatenates each scale's features (a 1x1 "from RGB" conv, the paper's lin_cat combine) at the block of matching
resolution, so gradients reach every scale of G at once.

`G(z, y)` gives the full-resolution image as every other G does (samples, EMA, evaluation); `G(z, y, pyramid=True)`
gives the list [4 px, 8 px, ..., R px]. `D(x, y)` takes such a list (G's fakes in the training phases) or one image
batch, whose pyramid it builds by average pooling (real images, penalties on inputs such as R1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gandist.models.base import BuildContext, projection_logits, small_image_pair_dims
from gandist.models.dcgan import _stages
from gandist.nn.cross_replica_bn import batch_norm
from gandist.nn.spectral_norm import conv2d, embedding, linear


def image_pyramid(x: torch.Tensor, scales: int) -> list[torch.Tensor]:
    """[x average-pooled to 4 px, ..., x] (`scales` images, coarse to fine, each half the next one's side)."""
    return [F.avg_pool2d(x, 2 ** k) if k else x for k in reversed(range(scales))]


class MSGGenerator(nn.Module):
    """z (+ class embedding) -> 4x4 -> upsampling conv stages (BN, ReLU); a 1x1 conv + tanh to an image after the
    4x4 base and after every stage."""

    pyramid_output = True  # the phases ask the net: it has pyramid=True

    def __init__(self, z_dim: int, ch: int, resolution: int, channels: int, num_classes: int, bn_group=None):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        stages = _stages(resolution)
        self.width = width = ch * 2 ** stages
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        self.fc = nn.Linear(z_dim, width * 16, bias=False)  # BN follows: a bias would be cancelled
        self.bn0 = batch_norm(width * 16, bn_group, dims=1)
        self.blocks = nn.ModuleList()
        widths = [width]
        for _ in range(stages):
            out = width // 2
            self.blocks.append(nn.Sequential(nn.Upsample(scale_factor=2),
                                             nn.Conv2d(width, out, 3, padding=1, bias=False),
                                             batch_norm(out, bn_group), nn.ReLU()))
            width = out
            widths.append(out)
        self.to_rgb = nn.ModuleList([nn.Conv2d(w, channels, 1) for w in widths])

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0,
                pyramid: bool = False):
        h = z * truncation
        if self.embed is not None and y is not None:
            h = h + self.embed(y)
        h = torch.relu(self.bn0(self.fc(h))).view(len(z), self.width, 4, 4)
        if not pyramid:  # the finest image only: the coarser heads are not run
            for block in self.blocks:
                h = block(h)
            return torch.tanh(self.to_rgb[-1](h))
        images = [torch.tanh(self.to_rgb[0](h))]
        for block, rgb in zip(self.blocks, self.to_rgb[1:]):
            h = block(h)
            images.append(torch.tanh(rgb(h)))
        return images


class MSGDiscriminator(nn.Module):
    """Per block (input resolution down to 4 px): [features, from_rgb(image at this scale)] -> conv3x3 -> strided
    conv4x4; at 4x4 a last conv3x3, then a linear logit plus the projection term when conditional."""

    def __init__(self, ch: int, resolution: int, channels: int, num_classes: int, sn: bool):
        super().__init__()
        self.scales = _stages(resolution) + 1
        stages = self.scales - 1
        widths = [ch * 2 ** i for i in range(stages + 1)]  # features at R / 2^i
        # the finest scale's from_rgb gives all of the first block's input; the others add ch channels
        self.from_rgb = nn.ModuleList([conv2d(channels, ch, 1, sn=sn) for _ in range(stages + 1)])
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.blocks = nn.ModuleList()
        for i in range(stages):
            width_in = ch if i == 0 else widths[i] + ch
            self.blocks.append(nn.Sequential(conv2d(width_in, widths[i], 3, padding=1, sn=sn), act(),
                                             conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1, sn=sn), act()))
        self.final = nn.Sequential(conv2d(widths[-1] + ch, widths[-1], 3, padding=1, sn=sn), act())
        self.fc = linear(widths[-1] * 16, 1, sn)
        self.embed = embedding(num_classes, widths[-1] * 16, sn) if num_classes else None

    def freeze_blocks(self) -> list[nn.Module]:
        """FreezeD's blocks, input side first."""
        return list(self.blocks)

    def forward(self, x, y: torch.Tensor | None = None):
        images = x if isinstance(x, (list, tuple)) else image_pyramid(x, self.scales)
        if len(images) != self.scales:
            raise ValueError(f"MSG-GAN D takes {self.scales} scales, got {len(images)}")
        fine_to_coarse = images[::-1]
        h = self.from_rgb[0](fine_to_coarse[0])
        for i, block in enumerate(self.blocks):
            if i:
                h = torch.cat([h, self.from_rgb[i](fine_to_coarse[i])], 1)
            h = block(h)
        h = self.final(torch.cat([h, self.from_rgb[-1](fine_to_coarse[-1])], 1)).flatten(1)
        return projection_logits(self.fc, self.embed, h, y)


def build(cfg, info, ctx: BuildContext):
    """MSG-GAN pair for images of shape (C, R, R)."""
    classes, c, res, d_channels = small_image_pair_dims(cfg, info, ctx)
    return (MSGGenerator(cfg.z_dim, cfg.ch, res, c, classes, ctx.bn_process_group),
            MSGDiscriminator(cfg.ch, res, d_channels, classes, cfg.spectral_norm))
