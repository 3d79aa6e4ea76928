"""StyleGAN2 (Karras et al. 2020) with the skip generator and residual discriminator of config-f.

Layout and parameter shapes follow stylegan2-ada-pytorch's training/networks.py, so config-f at 1024 px builds with
its published counts (G 30,370,060, D 29,012,513). Pure torch: upfirdn2d is replaced by depthwise FIR convolutions
and the fused modulated conv by a grouped conv (gandist/nn/modulated_conv.py).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gandist.data.base import DataInfo
from gandist.models.base import BuildContext, conditional_classes, packed_info
from gandist.nn.equalized import EqualizedConv2d, EqualizedLinear, MinibatchStd, fir_kernel, normalize_2nd_moment, \
    upsample2d
from gandist.nn.modulated_conv import SynthesisLayer, ToRGBLayer

MIN_RESOLUTION = 8


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: min(channel_base // res, channel_max)."""
    return min(channel_base // res, channel_max)


class MappingNetwork(nn.Module):
    """z (and class embedding) -> w through an MLP with lr multiplier; tracks w_avg for truncation."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int, lr_mul: float,
                 w_avg_beta: float | None = 0.995) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        embed_features = w_dim if c_dim else 0
        self.embed = EqualizedLinear(c_dim, embed_features) if c_dim else None
        features = [z_dim + embed_features] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualizedLinear(features[i], features[i + 1], activation="lrelu", lr_mul=lr_mul) for i in range(num_layers)
        )
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation: float = 1.0,
                update_w_avg: bool = False, truncation_cutoff: int | None = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim] (or w [N, w_dim] when num_ws is None); truncation_cutoff K: only the first K ws
        are truncated (stylegan2-ada's truncation_cutoff: coarse styles pulled to w_avg, fine ones kept)."""
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z))
        if self.c_dim:
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for layer in self.layers:
            x = layer(x)
        if update_w_avg and self.w_avg_beta is not None:
            with torch.no_grad():  # as stylegan2-ada: w_avg <- lerp(mean w, w_avg, beta) on each training forward
                self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation != 1.0:
            k = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.to(x.dtype).lerp(x[:, :k], truncation), x[:, k:]], dim=1)
        return x


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (const or up-conv), conv, ToRGB added to the upsampled image."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, res: int, img_ch: int, conv_clamp) -> None:
        super().__init__()
        self.in_ch, self.res = in_ch, res
        if in_ch == 0:
            self.const = nn.Parameter(torch.randn(out_ch, res, res))
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, res, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim, res, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_ch, img_ch, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_ch == 0 else 2
        self.register_buffer("resample_filter", fir_kernel(), persistent=False)

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str):
        """ws [N, num_conv + 1, w_dim]: one per conv and one for ToRGB (shared with the next block's first conv)."""
        if self.in_ch == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws -> image through blocks at 4, 8, ..., resolution px."""

    def __init__(self, w_dim: int, resolution: int, img_ch: int, channel_base: int, channel_max: int,
                 conv_clamp=None) -> None:
        super().__init__()
        log2 = int(math.log2(resolution))
        self.resolutions = [2 ** i for i in range(2, log2 + 1)]
        blocks, self.num_ws = [], 0
        for res in self.resolutions:
            in_ch = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            block = SynthesisBlock(in_ch, channels_at(res, channel_base, channel_max), w_dim, res, img_ch, conv_clamp)
            blocks.append(block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last ToRGB
        self.blocks = nn.ModuleList(blocks)

    def forward(self, ws: torch.Tensor, noise_mode: str | None = None) -> torch.Tensor:
        """Image from ws; noise is random in training and the stored constant in eval mode unless noise_mode says."""
        noise_mode = noise_mode or ("random" if self.training else "const")
        x = img = None
        w_idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, w_idx: w_idx + block.num_conv + 1], noise_mode)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 G: mapping(z, y) -> ws, synthesis(ws) -> image; truncation toward w_avg; style mixing in training."""

    def __init__(self, cfg, info: DataInfo, num_classes: int) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.w_dim = cfg.z_dim, num_classes, cfg.w_dim
        self.style_mixing_prob = cfg.style_mixing_prob
        self.synthesis = SynthesisNetwork(cfg.w_dim, info.shape[-1], info.shape[0], cfg.channel_base,
                                          cfg.channel_max, cfg.conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.map = MappingNetwork(cfg.z_dim, num_classes, cfg.w_dim, self.num_ws, cfg.mapping_layers,
                                  cfg.mapping_lr_mul, cfg.w_avg_beta)

    @property
    def w_avg(self) -> torch.Tensor:
        """Running mean of w (the truncation target)."""
        return self.map.w_avg

    def _onehot(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("this StyleGAN2 G is conditional: pass class labels y")
        return nn.functional.one_hot(y.long(), self.num_classes).float()

    def mapping(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim]; updates w_avg in training mode."""
        return self.map(z, self._onehot(y, z.shape[0]), truncation, update_w_avg=self.training,
                        truncation_cutoff=truncation_cutoff)

    @staticmethod
    def mix_styles(ws: torch.Tensor, ws2: torch.Tensor, cutoff) -> torch.Tensor:
        """ws for layers [0, cutoff), ws2 from cutoff on (style mixing regularization); cutoff int or 0-d tensor."""
        layer = torch.arange(ws.shape[1], device=ws.device)
        return torch.where((layer >= cutoff)[None, :, None], ws2, ws)  # a mask, not a slice: no graph break

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        """Images [N, C, H, W] from z [N, z_dim]; in training, style mixing with probability style_mixing_prob."""
        ws = self.mapping(z, y, truncation, truncation_cutoff)
        if self.training and self.style_mixing_prob > 0:
            # as stylegan2-ada: cutoff in [1, num_ws), or num_ws (no mixing) with probability 1 - p; torch RNG
            cutoff = torch.randint(1, self.num_ws, (), device=z.device)
            mix = torch.rand((), device=z.device) < self.style_mixing_prob
            cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, self.num_ws))
            ws2 = self.map(torch.randn_like(z), self._onehot(y, z.shape[0]), truncation, update_w_avg=False)
            ws = self.mix_styles(ws, ws2, cutoff)
        return self.synthesis(ws)


class DiscriminatorBlock(nn.Module):
    """Residual D block: (FromRGB on the first), conv3, conv3 with 2x down; skip 1x1 down; both scaled by sqrt(1/2)."""

    def __init__(self, in_ch: int, tmp_ch: int, out_ch: int, img_ch: int, conv_clamp) -> None:
        super().__init__()
        self.fromrgb = EqualizedConv2d(img_ch, tmp_ch, 1, activation="lrelu", conv_clamp=conv_clamp) if in_ch == 0 else None
        self.conv0 = EqualizedConv2d(tmp_ch, tmp_ch, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualizedConv2d(tmp_ch, out_ch, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = EqualizedConv2d(tmp_ch, out_ch, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class Discriminator(nn.Module):
    """StyleGAN2 residual D with minibatch-std epilogue; projection onto a class mapping when conditional."""

    def __init__(self, cfg, info: DataInfo, num_classes: int) -> None:
        super().__init__()
        res, img_ch = info.shape[-1], info.shape[0]
        cb, cm = cfg.channel_base, cfg.channel_max
        resolutions = [2 ** i for i in range(int(math.log2(res)), 2, -1)]
        blocks = []
        for r in resolutions:
            in_ch = channels_at(r, cb, cm) if r < res else 0
            blocks.append(DiscriminatorBlock(in_ch, channels_at(r, cb, cm), channels_at(r // 2, cb, cm), img_ch,
                                             cfg.conv_clamp))
        self.blocks = nn.ModuleList(blocks)
        ch4 = channels_at(4, cb, cm)
        self.cmap_dim = ch4 if num_classes else 0
        self.num_classes = num_classes
        self.mapping = MappingNetwork(0, num_classes, ch4, None, cfg.d_mapping_layers, 0.01, None) if num_classes else None
        self.mbstd = MinibatchStd(cfg.mbstd_group, 1)
        self.conv = EqualizedConv2d(ch4 + 1, ch4, 3, activation="lrelu", conv_clamp=cfg.conv_clamp)
        self.fc = EqualizedLinear(ch4 * 16, ch4, activation="lrelu")
        self.out = EqualizedLinear(ch4, max(self.cmap_dim, 1))

    def freeze_blocks(self) -> list[nn.Module]:
        """FreezeD's blocks, input side first: the resolution blocks (stylegan2-ada's --freezed counts them so)."""
        return list(self.blocks)

    def forward(self, img: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N]."""
        x = None
        for block in self.blocks:
            x = block(x, img)
        x = self.conv(self.mbstd(x))
        x = self.out(self.fc(x.flatten(1)))
        if self.mapping is not None and y is not None:
            cmap = self.mapping(None, nn.functional.one_hot(y.long(), self.num_classes).float())
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        elif self.mapping is not None:
            x = x.mean(dim=1, keepdim=True)  # no labels given: the unprojected mean (used only for diagnostics)
        return x.squeeze(1)


def check_config(cfg, info: DataInfo) -> int:
    """Validate cfg against the data; returns the class count used."""
    if not info.is_image or info.shape[1] != info.shape[2]:
        raise ValueError(f"model.arch stylegan2 needs square images, got data shape {tuple(info.shape)}")
    res = info.shape[-1]
    if res < MIN_RESOLUTION or res & (res - 1):
        raise ValueError(f"model.arch stylegan2 needs a power-of-two resolution >= {MIN_RESOLUTION}, the data gives "
                         f"{res} px; set data.resolution to e.g. 16, 32, 256 or 1024")
    return conditional_classes(cfg, info)


def build(cfg, info: DataInfo, ctx: BuildContext) -> tuple[nn.Module, nn.Module]:
    """StyleGAN2 (G, D) for square power-of-two images."""
    num_classes = check_config(cfg, info)
    # PacGAN: D sees `pack` images stacked on channels and, like the other archs, no labels
    D = Discriminator(cfg, packed_info(info, ctx.pack), num_classes if ctx.pack == 1 else 0)
    return Generator(cfg, info, num_classes), D
