"""LPIPS-VGG16 (Zhang et al. 2018, version 0.1) for perceptual path length, from weight files the user gives.

The `lpips` package is not installed here (and torchvision does not import beside the pinned torch), so this is a
port of its `LPIPS(net='vgg', version='0.1')`: torchvision's VGG16 `features` cut after relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3; inputs in [-1, 1] shifted and scaled per channel (its ScalingLayer); each layer's activations
unit-normalized over channels (eps 1e-10), squared differences weighted by a 1x1 conv without bias (the linear
heads), averaged over space and summed over layers.

Two files, both read through fsspec, never downloaded:
- the VGG16 backbone as torchvision publishes it, `vgg16-397923af.pth` (keys `features.N.weight|bias`; the
  classifier is ignored); its sha256 must start with 397923af (the torch.hub file-name convention) or equal
  eval.vgg16_sha256;
- the linear heads of lpips v0.1, `lpips/weights/v0.1/vgg.pth` in the lpips package (keys `lin0.model.1.weight` ..
  `lin4.model.1.weight`, shapes [1, C, 1, 1]); gandist knows no published sha256 of it, so it is checked against
  eval.lpips_sha256 when given, and its sha256 is recorded with every PPL result either way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gandist.errors import UserError
from gandist.eval.features import check_state_matches, read_checked_weights

VGG16_FILE = "vgg16-397923af.pth"
VGG16_SHA256_PREFIX = "397923af"
LPIPS_FILE = "vgg.pth (lpips v0.1)"
CHANNELS = (64, 128, 256, 512, 512)
# torchvision vgg16().features: conv widths (M: max pool); LPIPS taps the ReLU before each pool (and after the last)
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features`


def vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 `features` up to relu5_3, with the same module indices (so its weights load)."""
    layers, cin = [], 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU(inplace=False)]
            cin = item
    return nn.Sequential(*layers)


class LinearHead(nn.Module):
    """lpips' NetLinLayer: dropout (inactive in eval) then a 1x1 conv to one channel, no bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LinearHeads(nn.Module):
    """lin0..lin4, named as in the lpips weight file."""

    def __init__(self):
        super().__init__()
        for k, c in enumerate(CHANNELS):
            setattr(self, f"lin{k}", LinearHead(c))


class LPIPSVGG16(nn.Module):
    """LPIPS distance [N] between two image batches [N, 1|3, H, W] in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.heads = LinearHeads()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False)
        self.weights_sha256: dict[str, str] = {}

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        x0, x1 = x0.float(), x1.float()
        if x0.shape[1] == 1:
            x0, x1 = x0.repeat(1, 3, 1, 1), x1.repeat(1, 3, 1, 1)
        total = 0
        for k, (f0, f1) in enumerate(zip(self._taps(x0), self._taps(x1))):
            f0 = f0 / (f0.square().sum(1, keepdim=True).sqrt() + 1e-10)
            f1 = f1 / (f1.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self.heads, f"lin{k}").model((f0 - f1).square()).mean((2, 3))
        return total.flatten()


def load_lpips(lpips_path: str | None, vgg16_path: str | None, lpips_sha256: str | None = None,
               vgg16_sha256: str | None = None) -> LPIPSVGG16:
    """LPIPS-VGG16 from the lpips v0.1 heads file and torchvision's VGG16 file (paths or fsspec URLs)."""
    if not lpips_path or not vgg16_path:
        raise UserError("ppl needs the LPIPS-VGG16 weights: set eval.lpips_path (lpips v0.1 vgg.pth) and "
                        f"eval.vgg16_path ({VGG16_FILE}), or --lpips-path / --vgg16-path; nothing is downloaded")
    net = LPIPSVGG16()
    vgg, vgg_digest = read_checked_weights(vgg16_path, vgg16_sha256 or VGG16_SHA256_PREFIX, "VGG16", VGG16_FILE)
    if not isinstance(vgg, dict):
        raise UserError(f"{vgg16_path}: holds a {type(vgg).__name__}, not torchvision's VGG16 state dict")
    backbone = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
    check_state_matches(net.features, backbone, vgg16_path)
    net.features.load_state_dict(backbone)
    heads, heads_digest = read_checked_weights(lpips_path, lpips_sha256, "LPIPS", LPIPS_FILE)
    if not isinstance(heads, dict):
        raise UserError(f"{lpips_path}: holds a {type(heads).__name__}, not the lpips v0.1 linear heads")
    heads = {k: v for k, v in heads.items() if k.startswith("lin")}  # a whole saved LPIPS also holds net.*
    check_state_matches(net.heads, heads, lpips_path)
    net.heads.load_state_dict(heads)
    net.weights_sha256 = {"vgg16": vgg_digest, "lpips": heads_digest}
    return net.eval().requires_grad_(False)


def downsample_to(images: torch.Tensor, size: int = 256) -> torch.Tensor:
    """Area-average images larger than `size` by their integer factor (stylegan2-ada's PPL does this before VGG)."""
    factor = images.shape[-1] // size
    if factor <= 1:
        return images
    return F.avg_pool2d(images, factor)
