"""How images reach the feature network's input size: the three conventions published FIDs use.

Every mode first quantizes to uint8 (round(127.5 (x + 1)), clipped), as the references do when they read PNGs, so a
generator's sub-level float detail cannot move the number. Then, to `size` x `size`:
- pytorch_fid: torch bilinear, align_corners=False, no antialias (pytorch-fid; StyleGAN2-ADA's metrics do the same).
- clean: PIL bicubic with antialias on float32 channels (clean-fid, Parmar et al. 2022).
- tf_compat: TensorFlow 1.x `resize_bilinear` (align_corners=False, no half-pixel centres: source = dest * in/out),
  as torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x` (the TF FID/IS code).
Results are float images in [-1, 1] on the input's device.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_MODES = ("pytorch_fid", "clean", "tf_compat")


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 levels 0..255 (round half to even as torch.round, then clipped)."""
    return torch.round((images.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)


def _tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 resize_bilinear(align_corners=False) of [N, C, H, W] floats."""
    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    (y0, y1, wy), (x0, x1, wx) = axis(x.shape[-2]), axis(x.shape[-1])
    top = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return top[..., x0] * (1 - wx) + top[..., x1] * wx


def _pil_bicubic(levels: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid's resize: each channel as a PIL float32 ('F') image, BICUBIC (antialiased by PIL), 0..255."""
    from PIL import Image

    arr = levels.cpu().numpy().astype(np.float32)
    out = np.empty((*arr.shape[:2], size, size), np.float32)
    for n in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[n, c], mode="F").resize((size, size), resample=Image.BICUBIC)
            out[n, c] = np.asarray(img)
    return torch.from_numpy(out.clip(0, 255)).to(levels.device)


def resize_for_features(images: torch.Tensor, size: int, mode: str = "pytorch_fid") -> torch.Tensor:
    """[N, C, H, W] images in [-1, 1] -> quantized and resized to size x size by `mode`, floats in [-1, 1]."""
    levels = quantize_uint8(images).float()  # 0..255
    if mode == "pytorch_fid":
        out = F.interpolate(levels / 255, size=(size, size), mode="bilinear", align_corners=False) * 255
    elif mode == "clean":
        out = _pil_bicubic(levels, size)
    elif mode == "tf_compat":
        out = _tf1_bilinear(levels, size)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; choose from {', '.join(RESIZE_MODES)}")
    return out / 127.5 - 1
