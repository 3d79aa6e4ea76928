"""SNGAN-style ResNet pair (Miyato et al. 2018) for 16-64 px images: residual up/down blocks, projection D.

G is conditioned by adding a class embedding to z (simpler than conditional BN; BigGAN has the CBN version).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gandist.models.base import BuildContext, class_heads, d_output, small_image_pair_dims
from gandist.models.dcgan import _stages
from gandist.nn.cross_replica_bn import batch_norm
from gandist.nn.spectral_norm import conv2d, embedding, linear


class UpBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv with a 1x1 upsampled shortcut."""

    def __init__(self, ch: int, sn: bool, bn_group):
        super().__init__()
        self.bn1, self.bn2 = batch_norm(ch, bn_group), batch_norm(ch, bn_group)
        self.conv1 = conv2d(ch, ch, 3, padding=1, sn=sn, bias=False)  # feeds bn2 only: a bias would be cancelled
        self.conv2 = conv2d(ch, ch, 3, padding=1, sn=sn)
        self.skip = conv2d(ch, ch, 1, sn=sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class DownBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-avgpool with a 1x1 shortcut; the first block skips the leading ReLU."""

    def __init__(self, in_ch: int, ch: int, sn: bool, first: bool, dropout: float = 0.0):
        super().__init__()
        self.first, self.dropout = first, dropout
        self.conv1 = conv2d(in_ch, ch, 3, padding=1, sn=sn)
        self.conv2 = conv2d(ch, ch, 3, padding=1, sn=sn)
        self.skip = conv2d(in_ch, ch, 1, sn=sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        s = self.skip(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.skip(x), 2)
        # model.d_dropout: on the block's output (functional: no module, the checkpoint keys stay)
        return F.dropout(h + s, self.dropout, self.training) if self.dropout else h + s


class ResNetGenerator(nn.Module):
    """z (+ class embedding) -> 4x4 -> up blocks -> BN-ReLU-conv-tanh."""

    def __init__(self, z_dim, ch, resolution, channels, num_classes, sn, bn_group):
        super().__init__()
        self.z_dim, self.num_classes, self.ch = z_dim, num_classes, ch
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        self.fc = linear(z_dim, ch * 16, sn)
        self.blocks = nn.Sequential(*[UpBlock(ch, sn, bn_group) for _ in range(_stages(resolution))])
        self.bn = batch_norm(ch, bn_group)
        self.to_image = conv2d(ch, channels, 3, padding=1, sn=sn)

    def forward(self, z, y=None, truncation: float = 1.0):
        h = z * truncation
        if self.embed is not None and y is not None:
            h = h + self.embed(y)
        h = self.blocks(self.fc(h).view(len(z), self.ch, 4, 4))
        return torch.tanh(self.to_image(F.relu(self.bn(h))))


class ResNetDiscriminator(nn.Module):
    """Down blocks to 4x4, ReLU, global sum pooling, linear + projection."""

    def __init__(self, ch, resolution, channels, num_classes, sn, cfg=None):
        super().__init__()
        stages = _stages(resolution)
        dropout = getattr(cfg, "d_dropout", 0.0)
        self.blocks = nn.Sequential(*[DownBlock(channels if i == 0 else ch, ch, sn, i == 0, dropout)
                                      for i in range(stages)])
        self.fc = linear(ch, 1, sn)
        self.embed, self.aux = class_heads(cfg, num_classes, ch, lambda k, w: embedding(k, w, sn),
                                           lambda w, k: linear(w, k, sn))

    def freeze_blocks(self) -> list[nn.Module]:
        """FreezeD's blocks, input side first: the down blocks."""
        return list(self.blocks)

    def forward(self, x, y=None, return_class: bool = False):
        h = F.relu(self.blocks(x)).sum((2, 3))
        return d_output(self.fc, self.embed, self.aux, h, y, return_class)


def build(cfg, info, ctx: BuildContext):
    """ResNet pair for images of shape (C, R, R)."""
    classes, c, res, d_channels = small_image_pair_dims(cfg, info, ctx)
    return (ResNetGenerator(cfg.z_dim, cfg.ch, res, c, classes, cfg.sn_g, ctx.bn_process_group),
            ResNetDiscriminator(cfg.ch, res, d_channels, classes if ctx.pack == 1 else 0, cfg.spectral_norm,
                                cfg))
