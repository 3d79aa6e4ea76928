"""Modulated convolution with weight demodulation, noise injection and ToRGB (StyleGAN2).

Two implementations of the same op: `grouped` folds the batch into conv groups (one conv call, what training uses)
and `reference` loops over samples; tests assert they agree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gandist.nn.equalized import LRELU_GAIN, EqualizedLinear, fir_kernel, upsample2d


def modulate_weight(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                    eps: float = 1e-8) -> torch.Tensor:
    """Per-sample weights [N, O, I, k, k] = weight * style (per input channel), demodulated to unit output norm."""
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + eps).rsqrt()
    return w


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     padding: int = 0, impl: str = "grouped") -> torch.Tensor:
    """Convolve each sample of x [N, I, H, W] with its own modulated weight; impl 'grouped' or 'reference'."""
    n, in_ch, h, w_ = x.shape
    out_ch = weight.shape[0]
    wts = modulate_weight(weight, styles, demodulate)
    if impl == "reference":
        return torch.cat([F.conv2d(x[i:i + 1], wts[i], padding=padding) for i in range(n)], dim=0)
    # one conv with N groups: [1, N*I, H, W] * [N*O, I, k, k]
    y = F.conv2d(x.reshape(1, n * in_ch, h, w_), wts.reshape(n * out_ch, in_ch, *weight.shape[2:]),
                 padding=padding, groups=n)
    return y.reshape(n, out_ch, y.shape[2], y.shape[3])


class SynthesisLayer(nn.Module):
    """Style-modulated 3x3 conv (optionally 2x upsampling first), per-pixel noise, bias and leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1: plain conv at init
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", fir_kernel(), persistent=False)
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros(1))  # [1], not 0-dim: DeepSpeed refuses 0-dim params

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", impl: str = "grouped"):
        styles = self.affine(w)
        if self.up == 2:
            x = upsample2d(x, self.resample_filter)
        x = modulated_conv2d(x, self.weight.to(x.dtype), styles, demodulate=True, padding=self.padding, impl=impl)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            else:
                noise = self.noise_const.to(x.dtype)
            x = x + noise * self.noise_strength.to(x.dtype)
        x = F.leaky_relu(x + self.bias.to(x.dtype).view(1, -1, 1, 1), 0.2) * LRELU_GAIN
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class ToRGBLayer(nn.Module):
    """1x1 modulated conv to image channels, without demodulation (StyleGAN2's skip outputs)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, impl: str = "grouped") -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight.to(x.dtype), styles, demodulate=False, impl=impl)
        x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x
