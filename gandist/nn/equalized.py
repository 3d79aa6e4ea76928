"""Equalized learning rate layers and helpers of StyleGAN2 (Karras et al. 2020).

Why: weights are stored at unit scale and multiplied by 1/sqrt(fan_in) at run time, so Adam's per-parameter step
is the same relative size for every layer (and `lr_mul` slows the mapping network by 100x, as StyleGAN does).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)  # keeps unit variance through leaky ReLU(0.2), as bias_act's def_gain


def lrelu_act(x: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Leaky ReLU(0.2) times sqrt(2), optionally clamped (StyleGAN's 'lrelu' with conv_clamp)."""
    x = F.leaky_relu(x, 0.2) * LRELU_GAIN
    return x.clamp(-clamp, clamp) if clamp is not None else x


class EqualizedLinear(nn.Module):
    """Fully connected layer with runtime weight scaling (stylegan2-ada's FullyConnectedLayer)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str = "linear") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ (weight * gain).T + bias * lr_mul, then lrelu * sqrt(2) (folded into weight and bias) if asked."""
        act_gain = LRELU_GAIN if self.activation == "lrelu" else 1.0
        w = self.weight.to(x.dtype) * (self.weight_gain * act_gain)
        b = self.bias.to(x.dtype) * (self.bias_gain * act_gain) if self.bias is not None else None
        x = F.linear(x, w, b)
        return F.leaky_relu_(x, 0.2) if self.activation == "lrelu" else x


def fir_kernel(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The separable [1,3,3,1] low-pass filter as a normalized 2-D kernel (sums to 1)."""
    f = torch.tensor(taps, dtype=torch.float32)
    k = f[:, None] * f[None, :]
    return k / k.sum()


def upsample2d(x: torch.Tensor, kernel: torch.Tensor, full: bool = False) -> torch.Tensor:
    """2x upsampling with zero insertion and FIR filtering (upfirdn2d with up=2, gain 4): [H] -> [2H] ([2H+2] full)."""
    c = x.shape[1]
    k = (kernel * 4).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv_transpose2d(x, k, stride=2, padding=0 if full else 1, groups=c)


def downsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x downsampling: FIR low-pass then keep every other pixel (upfirdn2d with down=2)."""
    c = x.shape[1]
    k = kernel.to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1)), k, stride=2, groups=c)


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """FIR filtering with explicit padding (left, right, top, bottom)."""
    c = x.shape[1]
    k = kernel.to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, pad), k, groups=c)


def conv_up2(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor, groups: int = 1,
             impl: str = "fast") -> torch.Tensor:
    """2x-upsampling conv [N, G*I, H, W] -> [N, G*O, 2H, 2W] with weight [G*O, I, k, k] (k odd, >= 3).

    'fast': a stride-2 transposed conv of the low-resolution input, then the FIR filter (gain 4) at 2H: a quarter of
    the multiply-adds of 'ref', which upsamples first (zero insertion + FIR) and convolves at 2H. Both are the same
    composite filter x_up * fir * w with no intermediate cropping, so they agree to float rounding, borders included.
    """
    k = weight.shape[-1]
    if impl == "ref":
        return F.conv2d(upsample2d(x, kernel, full=True), weight, padding=k // 2 - 1, groups=groups)
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    # conv_transpose2d is the adjoint of conv2d's correlation: flip the taps, weight layout [G*I, O, k, k]
    w_t = weight.flip([2, 3]).reshape(groups, out_per_group, in_per_group, k, k).transpose(1, 2)
    y = F.conv_transpose2d(x, w_t.reshape(groups * in_per_group, out_per_group, k, k), stride=2, groups=groups)
    p = (5 - k) // 2  # [2H + k - 2] -> [2H] through the 4-tap filter
    return blur(y, kernel * 4, (p, p, p, p))


def conv_down2(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor, impl: str = "fast",
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """2x-downsampling conv [N, I, H, W] -> [N, O, H/2, W/2] with weight [O, I, k, k] (k odd), plus bias [O].

    'fast': FIR blur at H, then a stride-2 conv (the conv runs at the low resolution). 'ref': the conv at full
    resolution, then FIR + decimation. The same composite filter with no intermediate cropping, so they agree to
    float rounding, borders included; both sample output o at input position 2o + 1/2, as the 1x1 skip path does.
    """
    k = weight.shape[-1]
    if impl == "ref":
        y = F.conv2d(x, weight, padding=(k + 1) // 2)  # [H + 2]: the full conv for k = 3, nothing cropped
        c = y.shape[1]
        y = F.conv2d(y, kernel.to(y.dtype)[None, None].repeat(c, 1, 1, 1), stride=2, groups=c)
        return y if bias is None else y + bias.view(1, -1, 1, 1)
    if k == 1:
        return F.conv2d(downsample2d(x, kernel), weight, bias)
    p = (k + 1) // 2  # pad 2 for k=3: [H + 1] after the blur, [H/2] after the valid stride-2 conv
    return F.conv2d(blur(x, kernel, (p, p, p, p)), weight, bias, stride=2)


class EqualizedConv2d(nn.Module):
    """Conv layer with runtime weight scaling and optional FIR 2x down/upsampling (stylegan2-ada's Conv2dLayer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0, impl: str = "fast") -> torch.Tensor:
        """Conv (+ 2x resampling), bias, activation times gain (> 0), clamp; impl 'fast' or 'ref' for the resampling."""
        # lrelu(z) * c == lrelu(c * z) for c > 0: the gains go into the weight and bias, so the conv adds the bias
        # and one in-place lrelu follows, instead of three more full-size elementwise ops
        act_gain = LRELU_GAIN * gain if self.activation == "lrelu" else gain
        w = self.weight.to(x.dtype) * (self.weight_gain * act_gain)
        b = self.bias.to(x.dtype) * act_gain if self.bias is not None else None
        if self.up == 2:
            x = F.conv2d(upsample2d(x, self.resample_filter), w, b, padding=self.padding)
        elif self.down == 2:
            x = conv_down2(x, w, self.resample_filter, impl, bias=b)  # blur then stride-2 conv: no aliasing
        else:
            x = F.conv2d(x, w, b, padding=self.padding)
        if self.activation == "lrelu":
            x = F.leaky_relu_(x, 0.2)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return x.clamp(-clamp, clamp) if clamp is not None else x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2)) along `dim` (pixel norm of z and the class embedding)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class MinibatchStd(nn.Module):
    """Appends the std of features over groups of samples as extra channels (D's mode-collapse signal)."""

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            g = 1  # a batch the group does not divide: per-sample std is 0, which is still well defined
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n/G, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n/G, F, c, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [n, F, H, W]
        return torch.cat([x, y], dim=1)
