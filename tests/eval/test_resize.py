"""Each resize mode against its reference behaviour on fixed inputs, and the uint8 quantization before it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gandist.eval.resize import quantize_uint8, resize_for_features


def _levels_to_unit(levels) -> torch.Tensor:
    return torch.as_tensor(levels, dtype=torch.float32) / 127.5 - 1


def test_quantization_maps_to_uint8_levels_as_png_writers_do():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.7, -3.0])
    assert quantize_uint8(x).tolist() == [0, 0, 128, 191, 255, 255, 0]  # 127.5 rounds to even: 128


def test_tf_compat_matches_hand_computed_tf1_resize_bilinear():
    # TF1 align_corners=False: dest i reads source i * in/out = 0, 0.5, 1, 1.5; the upper neighbour of 1.5 clamps to 1
    levels = torch.tensor([[[[0.0, 100.0], [200.0, 40.0]]]])
    out = (resize_for_features(_levels_to_unit(levels), 4, "tf_compat") + 1) * 127.5
    row0, row1 = [0, 50, 100, 100], [200, 120, 40, 40]
    mid = [(a + b) / 2 for a, b in zip(row0, row1)]
    expected = torch.tensor([[[row0, mid, row1, row1]]], dtype=torch.float32)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)
    # and it is not torch's half-pixel bilinear, whose first column already mixes both source pixels
    half_pixel = F.interpolate(levels, size=(4, 4), mode="bilinear", align_corners=False)
    assert (half_pixel - expected).abs().max() > 10


def test_pytorch_fid_mode_is_torch_bilinear_of_uint8_over_255():
    levels = torch.arange(3 * 7 * 5, dtype=torch.float32).reshape(1, 3, 7, 5) % 256
    out = resize_for_features(_levels_to_unit(levels), 11, "pytorch_fid")
    expected = 2 * F.interpolate(levels / 255, size=(11, 11), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_clean_mode_is_pil_bicubic_with_antialias_on_float_channels():
    gen = np.random.default_rng(0)
    levels = gen.integers(0, 256, size=(1, 3, 32, 32)).astype(np.float32)
    out = (resize_for_features(_levels_to_unit(levels), 8, "clean") + 1) * 127.5
    for c in range(3):
        ref = np.asarray(Image.fromarray(levels[0, c], mode="F").resize((8, 8), resample=Image.BICUBIC))
        np.testing.assert_allclose(out[0, c].numpy(), ref.clip(0, 255), atol=1e-3)
    # downscaling 4x: PIL's antialiased bicubic averages noise away, torch's plain bicubic samples it
    plain = F.interpolate(torch.from_numpy(levels), size=(8, 8), mode="bicubic", align_corners=False)
    assert out.std() < 0.7 * plain.std()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="tf_compat"):
        resize_for_features(torch.zeros(1, 1, 2, 2), 4, "nearest")
