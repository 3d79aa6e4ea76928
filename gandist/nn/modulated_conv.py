"""Modulated convolution with weight demodulation, noise injection and ToRGB (StyleGAN2).

One op, three implementations (Karras et al. 2020, sec. 2.2 and appendix B), chosen by `choose_impl`:
- 'activation' (training): scale the input channels by the styles, one ordinary shared-weight conv, then scale the
  output channels by the demodulation coefficients 1/sqrt(sum_ik (w_oik s_i)^2). Weight gradients come from one
  batched conv instead of N per-sample convs.
- 'fused' (GPU inference, batch 1, 1x1 kernels): per-sample modulated weights, the batch folded into one grouped
  conv (a batched matmul for 1x1).
- 'ref': a loop over samples with per-sample weights, upsampling before the conv: the plain reading of the maths,
  kept for the tests. ('grouped' and 'reference' are the old names of 'fused' and 'ref'.)
All three agree to float rounding (tests/models/test_stylegan2_ops.py); tools/bench/stylegan2_ops.py times them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gandist.nn.equalized import LRELU_GAIN, EqualizedLinear, conv_up2, fir_kernel

IMPLS = ("auto", "activation", "fused", "ref")
_OLD_NAMES = {"grouped": "fused", "reference": "ref"}


def modulate_weight(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                    eps: float = 1e-8) -> torch.Tensor:
    """Per-sample weights [N, O, I, k, k] = weight * style (per input channel), demodulated to unit output norm."""
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + eps).rsqrt()
    return w


def demodulation(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """[N, O]: 1 / ||weight[o] * styles[n]||, the fused form's demodulation without building per-sample weights."""
    return (styles.square() @ weight.square().sum(dim=[2, 3]).t() + eps).rsqrt()


def choose_impl(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor) -> str:
    """'fused' for 1x1 kernels, at batch 1, and off the CPU when no gradient will be taken; else 'activation'.

    Why (tools/bench/stylegan2_ops.py; docs/benchmarks.md, "StyleGAN2 against stylegan2-ada-pytorch"): with
    gradients a kxk 'fused' conv builds N weight copies and its backward runs N small per-group convs, where
    'activation' runs one batched conv: 1.3-2.4x faster fwd+bwd on CPU. On CPU 'activation' was faster forward-only
    too (1.2-3x), so 'fused' is kept for inference on GPUs only, as stylegan2-ada does (one kernel per layer;
    re-check there with `--device cuda`). A 1x1 kernel (ToRGB) needs no conv: 'fused' is one batched matmul with
    [N, O, I] weights. At batch 1 the per-sample weight is the only weight.
    """
    if weight.shape[-1] == 1 or x.shape[0] == 1:
        return "fused"
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or styles.requires_grad)
    return "fused" if not needs_grad and x.device.type != "cpu" else "activation"


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     padding: int | None = None, up: int = 1, resample_filter: torch.Tensor | None = None,
                     impl: str = "auto") -> torch.Tensor:
    """Convolve each sample of x [N, I, H, W] with weight [O, I, k, k] modulated by styles [N, I].

    up=2 upsamples 2x with the FIR filter (stride-2 transposed conv then FIR; 'ref' upsamples then convolves).
    padding defaults to k // 2 ('same'); impl is one of IMPLS.
    """
    y, demod = modulated_conv2d_parts(x, weight, styles, demodulate, padding, up, resample_filter, impl)
    return y if demod is None else y * demod


def modulated_conv2d_parts(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                           padding: int | None = None, up: int = 1, resample_filter: torch.Tensor | None = None,
                           impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, demod [N, O, 1, 1] or None): modulated_conv2d is y * demod, left to the caller to fuse with its epilogue."""
    impl = _OLD_NAMES.get(impl, impl)
    if impl not in IMPLS:
        raise ValueError(f"modulated_conv2d impl {impl!r}: choose one of {IMPLS}")
    if impl == "auto":
        impl = choose_impl(x, weight, styles)
    padding = weight.shape[-1] // 2 if padding is None else padding
    kernel = fir_kernel().to(x.device) if up == 2 and resample_filter is None else resample_filter
    if impl == "activation":
        y = _conv(x * styles.to(x.dtype)[:, :, None, None], weight, padding, up, kernel, groups=1, impl="fast")
        return y, demodulation(weight, styles).to(y.dtype)[:, :, None, None] if demodulate else None
    wts = modulate_weight(weight, styles, demodulate)
    n, in_ch = x.shape[:2]
    if impl == "ref":
        return torch.cat([_conv(x[i:i + 1], wts[i], padding, up, kernel, 1, "ref") for i in range(n)], dim=0), None
    if weight.shape[-1] == 1 and up == 1 and padding == 0:
        # a 1x1 conv is a batched matmul: [N, O, I] @ [N, I, H*W]
        return torch.bmm(wts[..., 0, 0], x.reshape(n, in_ch, -1)).reshape(n, -1, *x.shape[2:]), None
    # one conv with N groups: [1, N*I, H, W] * [N*O, I, k, k]
    y = _conv(x.reshape(1, n * in_ch, *x.shape[2:]), wts.reshape(-1, in_ch, *weight.shape[2:]), padding, up, kernel,
              groups=n, impl="fast")
    return y.reshape(n, -1, *y.shape[2:]), None


def _conv(x, weight, padding: int, up: int, kernel, groups: int, impl: str) -> torch.Tensor:
    if up == 2:
        return conv_up2(x, weight, kernel, groups=groups, impl=impl)
    return F.conv2d(x, weight, padding=padding, groups=groups)


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

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", impl: str = "auto"):
        """[N, I, H, W] -> [N, O, res, res]; noise_mode 'random', 'const' or 'none'; impl as modulated_conv2d."""
        styles = self.affine(w)
        y, demod = modulated_conv2d_parts(x, self.weight.to(x.dtype), styles, demodulate=True, padding=self.padding,
                                          up=self.up, resample_filter=self.resample_filter, impl=impl)
        # lrelu(y * demod + noise * strength + bias) * gain, with the gain folded into the small factors (lrelu is
        # positively homogeneous): one addcmul, one in-place add and an in-place lrelu instead of five full-size ops
        bias = self.bias.to(y.dtype).view(1, -1, 1, 1) * LRELU_GAIN
        x = torch.addcmul(bias, y, demod * LRELU_GAIN) if demod is not None else torch.add(bias, y, alpha=LRELU_GAIN)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn(y.shape[0], 1, self.resolution, self.resolution, device=y.device, dtype=y.dtype)
            else:
                noise = self.noise_const.to(y.dtype)
            x = x.add_(noise * (self.noise_strength.to(y.dtype) * LRELU_GAIN))
        x = F.leaky_relu_(x, 0.2)
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

    def forward(self, x: torch.Tensor, w: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """[N, I, H, W] -> [N, img_channels, H, W], the skip image's increment."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight.to(x.dtype), styles, demodulate=False, impl=impl)
        x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x
