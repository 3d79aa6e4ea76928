"""Perceptual path length: closed form on a linear generator, LPIPS-VGG16 from user files, determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn

from gandist.errors import UserError
from gandist.eval.features import sha256_of
from gandist.eval.lpips import load_lpips
from gandist.eval.ppl import filtered_mean, path_lengths


class LinearStyleG(nn.Module):
    """G(w) = A w with an identity mapping (w = z): a generator whose path length has a closed form."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A, requires_grad=False)
        self.z_dim, self.num_classes = A.shape[1], 0

    def mapping(self, z, y=None):
        return z

    def synthesis(self, ws, noise_mode="const"):
        return (ws @ self.A.T)[:, None, None, :]  # [N, 1, 1, k] "images"


def squared_l2(a, b):
    return (a - b).square().flatten(1).sum(1)


def test_ppl_of_a_linear_generator_matches_the_trimmed_chi_square_mean():
    # A = c Q with orthonormal rows (k of them): G(w1) - G(w0) = c Q (w1 - w0), w1 - w0 ~ N(0, 2 I), so a pair's
    # length |A (w1 - w0)|^2 = 2 c^2 X with X ~ chi2(k), whatever t (G is linear); the 1st-99th percentile mean of
    # chi2(k) is k (F_{k+2}(hi) - F_{k+2}(lo)) / 0.98 with lo, hi the chi2(k) percentiles
    k, dim, c = 6, 10, 0.5
    q, _ = torch.linalg.qr(torch.randn(dim, k, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    G = LinearStyleG((c * q.T).float().contiguous())  # float32, as generators run
    lengths = path_lengths(G, squared_l2, 20000, space="w", sampling="full", batch_size=5000, seed=0)
    # the finite difference / eps^2 is the squared derivative: exact for a linear G up to float rounding
    lo, hi = scipy_stats.chi2.ppf([0.01, 0.99], k)
    expected = 2 * c ** 2 * k * (scipy_stats.chi2.cdf(hi, k + 2) - scipy_stats.chi2.cdf(lo, k + 2)) / 0.98
    # measured 2.9668 vs 2.9596 (standard error ~0.3%); the untrimmed mean (3.008) would miss by 1.6%
    assert filtered_mean(lengths) == pytest.approx(expected, rel=0.008)
    assert float(lengths.mean()) == pytest.approx(2 * c ** 2 * k, rel=0.01)  # untrimmed: E = 2 c^2 k


def test_filtered_mean_drops_below_the_1st_and_above_the_99th_percentile():
    d = np.arange(1, 201, dtype=float)  # percentiles 1 ('lower') = 2, 99 ('higher') = 199
    assert filtered_mean(d) == pytest.approx(np.arange(2, 200).mean())
    assert filtered_mean(np.r_[d, 1e9]) < 200  # one huge outlier is filtered


def test_lpips_files_are_checked_and_the_distance_is_a_distance(random_lpips_files):
    f = random_lpips_files
    with pytest.raises(UserError, match="does not match the expected 397923af"):  # not torchvision's published file
        load_lpips(str(f["lpips"]), str(f["vgg16"]))
    with pytest.raises(UserError, match="weights of a different network"):  # heads given as the backbone
        load_lpips(str(f["vgg16"]), str(f["vgg16"]), vgg16_sha256=f["vgg16_sha256"])
    with pytest.raises(UserError, match="set eval.lpips_path"):
        load_lpips(None, str(f["vgg16"]))
    net = load_lpips(str(f["lpips"]), str(f["vgg16"]), vgg16_sha256=f["vgg16_sha256"])
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = x.roll(1, 0)
    assert torch.equal(net(x, x), torch.zeros(4))
    assert torch.allclose(net(x, y), net(y, x)) and bool((net(x, y) > 0).all())
    assert torch.equal(net(x[:, :1], y[:, :1]), net(x[:, :1].repeat(1, 3, 1, 1), y[:, :1].repeat(1, 3, 1, 1)))


def test_ppl_and_intra_fid_on_a_digits_run_are_deterministic(untrained_digits_cache, tiny_digits_run,
                                                             random_lpips_files, tmp_path):
    from gandist.cli import main

    f = random_lpips_files
    args = ["eval", str(tiny_digits_run), "--metrics", "ppl,intra_fid", "--num", "100", "--lpips-path",
            str(f["lpips"]), "--vgg16-path", str(f["vgg16"])]
    assert main(args) == 2  # the random backbone is not the published file: refused before any sampling
    runs = []
    for name in ("a.json", "b.json"):
        assert main([*args, "--out", str(tmp_path / name), "--set", f"eval.vgg16_sha256={f['vgg16_sha256']}"]) == 0
        runs.append(json.loads((tmp_path / name).read_text()))
    a, b = runs
    assert a["ppl"] == b["ppl"] and a["intra_fid_per_class"] == b["intra_fid_per_class"]
    assert a["ppl"] > 0 and np.isfinite(a["ppl"]) and a["ppl_space"] == "z" and a["ppl_sampling"] == "end"
    assert len(a["intra_fid_per_class"]) == 10
    assert a["intra_fid"] == pytest.approx(np.mean(a["intra_fid_per_class"]))
    assert a["vgg16_sha256"] == f["vgg16_sha256"] and a["lpips_sha256"] == sha256_of(f["lpips"].read_bytes())
