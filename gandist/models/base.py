"""What the loop expects of a generator and a discriminator, and what a builder receives.

Builders: `build(cfg, info, ctx) -> (G, D)` registered in gandist/registry.py.
- G: nn.Module with attributes `z_dim` and `num_classes` (0: unconditional); `forward(z, y=None) -> x` with x in
  the data's value range and shape [N, *info.shape]. Optional: `forward(z, y, truncation=psi)`; StyleGAN2-like G
  also offers `mapping(z, y) -> ws` and `synthesis(ws) -> x` (path-length regularization uses them). An MSG-GAN G
  (`pyramid_output = True`) also takes `pyramid=True` and returns its images at every scale, coarse to fine.
- D: nn.Module; `forward(x, y=None) -> logits [N]`; an auxiliary-classifier D (ACGAN) also takes
  `return_class=True` and returns (logits, class logits [N, K]) (PacGAN: the loop packs inputs before D; D is built with
  `info.shape` channels multiplied by the pack size, see `packed_info`). A U-Net D (`pixel_output = True`) also takes
  `return_pixels=True` and returns (logits, per-pixel logits [N, H, W]); an MSG-GAN D also takes G's pyramid as x.
Models are pure torch: no torch.distributed calls; cross-replica BN gets its group via ctx.bn_process_group.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gandist.data.base import DataInfo


@dataclass(frozen=True)
class BuildContext:
    """What a builder may need beyond the config and the data's shape."""

    bn_process_group: Any = None  # cross-replica BN group (None: plain BN)
    pack: int = 1  # PacGAN: D sees `pack` samples stacked along channels


def packed_info(info: DataInfo, pack: int) -> DataInfo:
    """Data info as D sees it under PacGAN packing (channels or features multiplied by `pack`)."""
    if pack == 1:
        return info
    shape = (info.shape[0] * pack,) + tuple(info.shape[1:])
    return dataclasses.replace(info, shape=shape)


def conditional_classes(cfg, info: DataInfo) -> int:
    """Classes G and D are conditioned on: the data's when model.conditional, else 0; model.num_classes, when
    given, must agree with the data."""
    if getattr(cfg, "num_classes", None) is not None and cfg.conditional and cfg.num_classes != info.num_classes:
        raise ValueError(f"model.num_classes is {cfg.num_classes} but the data has {info.num_classes} classes; "
                         f"fix model.num_classes (or data.num_classes), or remove it to use the data's")
    return info.num_classes if cfg.conditional else 0


def small_image_pair_dims(cfg, info: DataInfo, ctx: BuildContext) -> tuple[int, int, int, int]:
    """(classes, channels, resolution, D's input channels under PacGAN) for the small image nets (dcgan, resnet)."""
    if not info.is_image:
        raise ValueError(f"model.arch={cfg.arch} needs image data (data.kind digits, folder or webdataset)")
    return (conditional_classes(cfg, info), info.shape[0], info.shape[1], packed_info(info, ctx.pack).shape[0])


def projection_logits(linear, embed, h, y):
    """D's logits [N] from pooled features h [N, F]: linear(h), plus <embed(y), h> when conditional (Miyato 2018)."""
    out = linear(h).squeeze(1)
    if embed is not None and y is not None:
        out = out + (embed(y) * h).sum(1)
    return out


def class_heads(cfg, num_classes: int, width: int, make_embed, make_linear):
    """(projection embedding, auxiliary class head) of a conditional D: one of them per model.d_conditioning."""
    auxiliary = getattr(cfg, "d_conditioning", "projection") == "auxiliary"
    if not num_classes:
        if auxiliary and cfg.conditional:  # labels unknown at config time (an image folder without sub-folders)
            raise ValueError("model.d_conditioning=auxiliary needs labelled data, but the data has no classes; use "
                             "one sub-folder per class, or model.d_conditioning=projection")
        return None, None
    if auxiliary:
        return None, make_linear(width, num_classes)
    return make_embed(num_classes, width), None


def d_output(linear, embed, aux, h, y, return_class: bool):
    """D's logits [N] from pooled features h; with return_class, (logits, class logits [N, K] or None) (ACGAN)."""
    logits = projection_logits(linear, embed, h, y)
    if not return_class:
        return logits
    return logits, (aux(h) if aux is not None else None)


def d_activation(dropout: float, slope: float = 0.2):
    """D's hidden activation: LeakyReLU, followed by dropout when model.d_dropout > 0. One module in the activation's
    slot (dropout has no state), so layer indices and checkpoint keys are the same with and without it."""
    from torch import nn

    act = nn.LeakyReLU(slope)
    return nn.Sequential(act, nn.Dropout(dropout)) if dropout else act


def count_params(module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
