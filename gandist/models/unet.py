"""U-Net GAN (Schonfeld et al. 2020): the SNGAN ResNet generator and an encoder-decoder discriminator with a global
output (per image, from the bottleneck) and a per-pixel output (from the decoder), each with a projection term.

The per-pixel loss (model.pixel_weight) is applied by the D and G phases (gandist/train/phases.py), CutMix
consistency by the `cutmix` penalty (gandist/objectives/cutmix.py). `D(x, y)` gives the global logits [N] as every
other D does (penalties, evaluation); `D(x, y, return_pixels=True)` gives (logits [N], pixel logits [N, R, R]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gandist.models.base import BuildContext, projection_logits, small_image_pair_dims
from gandist.models.dcgan import _stages
from gandist.models.resnet import DownBlock, ResNetGenerator
from gandist.nn.spectral_norm import conv2d, embedding, linear


class DecoderBlock(nn.Module):
    """ReLU-up-conv-ReLU-conv with a 1x1 upsampled shortcut, on the upsampled features concatenated with the
    encoder's features of the same resolution (the U-Net skip; none at the input resolution)."""

    def __init__(self, in_ch: int, ch: int, sn: bool):
        super().__init__()
        self.conv1 = conv2d(in_ch, ch, 3, padding=1, sn=sn)
        self.conv2 = conv2d(ch, ch, 3, padding=1, sn=sn)
        self.skip = conv2d(in_ch, ch, 1, sn=sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(F.interpolate(F.relu(x), scale_factor=2))))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class UNetDiscriminator(nn.Module):
    """Encoder: ResNet down blocks R -> 4 (width ch * 2^i, at most 4 ch); global head on the 4x4 bottleneck (ReLU, sum
    pooling, linear + projection). Decoder: up blocks 4 -> R, each fed the matching encoder output (skip); a 1x1 conv
    gives one logit per pixel, plus the per-pixel projection <embed(y), h_ij> when conditional."""

    pixel_output = True  # the phases ask the net: it has return_pixels

    def __init__(self, ch: int, resolution: int, channels: int, num_classes: int, sn: bool):
        super().__init__()
        stages = _stages(resolution)
        widths = [ch * 2 ** min(i, 2) for i in range(stages)]  # encoder output widths, input side first
        self.encoder = nn.ModuleList([DownBlock(channels if i == 0 else widths[i - 1], w, sn, i == 0)
                                      for i, w in enumerate(widths)])
        self.fc = linear(widths[-1], 1, sn)
        self.embed = embedding(num_classes, widths[-1], sn) if num_classes else None
        # decoder block k takes h at R / 2^(S-k) and outputs R / 2^(S-k-1), where the encoder output feats[S-2-k]
        # (width widths[S-2-k]) is concatenated to it; the last block (input resolution) has no skip
        self.decoder = nn.ModuleList()
        width = widths[-1]
        for k in range(stages):
            j = stages - 2 - k
            out = widths[j] if j >= 0 else ch
            self.decoder.append(DecoderBlock(width, out, sn))
            width = out + (widths[j] if j >= 0 else 0)
        self.pixel_fc = conv2d(ch, 1, 1, sn=sn)
        self.pixel_embed = embedding(num_classes, ch, sn) if num_classes else None

    def freeze_blocks(self) -> list[nn.Module]:
        """FreezeD's blocks, input side first: the encoder's down blocks."""
        return list(self.encoder)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, return_pixels: bool = False):
        feats = []
        h = x
        for block in self.encoder:
            h = block(h)
            feats.append(h)
        logits = projection_logits(self.fc, self.embed, F.relu(h).sum((2, 3)), y)
        if not return_pixels:
            return logits
        for k, block in enumerate(self.decoder):
            h = block(h)
            skip = len(feats) - 2 - k  # the encoder output at h's new resolution (none at the input resolution)
            if skip >= 0:
                h = torch.cat([h, feats[skip]], 1)
        h = F.relu(h)
        pixels = self.pixel_fc(h).squeeze(1)  # [N, R, R]
        if self.pixel_embed is not None and y is not None:
            pixels = pixels + torch.einsum("nc,nchw->nhw", self.pixel_embed(y), h)
        return logits, pixels


def build(cfg, info, ctx: BuildContext):
    """U-Net GAN pair for images of shape (C, R, R): ResNet G, U-Net D."""
    classes, c, res, d_channels = small_image_pair_dims(cfg, info, ctx)
    return (ResNetGenerator(cfg.z_dim, cfg.ch, res, c, classes, cfg.sn_g, ctx.bn_process_group),
            UNetDiscriminator(cfg.ch, res, d_channels, classes, cfg.spectral_norm))
