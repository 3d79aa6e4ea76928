"""Numerics of FID, KID, IS and precision/recall against independent float64 computations and closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from gandist.errors import UserError
from gandist.eval import frechet_distance
from gandist.eval.fid import FeatureStats
from gandist.eval.inception_score import InceptionScoreStats, inception_score
from gandist.eval.kid import kernel_inception_distance
from gandist.eval.precision_recall import precision_recall
from gandist.eval.streaming import FeatureBuffer


def _random_cov(rng, d):
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d) + 0.01 * np.eye(d)


def _fid_with_scipy(mu1, s1, mu2, s2):
    """The pytorch-fid formula: scipy.linalg.sqrtm of the (non-symmetric) product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_distance_matches_scipy_sqrtm_in_float64():
    rng = np.random.default_rng(0)
    for d in (3, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
        ours, ref = frechet_distance(mu1, s1, mu2, s2), _fid_with_scipy(mu1, s1, mu2, s2)
        assert ref > 1.0
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_frechet_distance_closed_forms_on_constructed_gaussians():
    rng = np.random.default_rng(1)
    d = 16
    s = _random_cov(rng, d)
    mu = rng.standard_normal(d)
    # identical Gaussians: 0
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    # shifted mean only: squared distance of the means
    shift = np.arange(d) / d
    assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(float(shift @ shift), rel=1e-9)
    # scaled covariance s2 = c^2 s1: tr(s1) (1 - c)^2
    c = 3.0
    assert frechet_distance(mu, s, mu, c * c * s) == pytest.approx(np.trace(s) * (1 - c) ** 2, rel=1e-9)
    # diagonal covariances: sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    assert frechet_distance(np.zeros(d), np.diag(a), np.zeros(d), np.diag(b)) == pytest.approx(
        float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()), rel=1e-9)
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1000, 8)) * np.arange(1, 9) + 5.0
    stats = FeatureStats(8)
    for chunk in np.array_split(x, 7):
        stats.update(torch.from_numpy(chunk).float())
    mu, cov = stats.mean_cov()
    xf = x.astype(np.float32).astype(np.float64)  # the features arrive as float32
    np.testing.assert_allclose(mu, xf.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(xf, rowvar=False), rtol=1e-9, atol=1e-9)


def test_fid_from_samples_approaches_the_population_value():
    gen = torch.Generator().manual_seed(3)
    d = 4
    real = torch.randn(20000, d, generator=gen, dtype=torch.float64)
    fake = torch.randn(20000, d, generator=gen, dtype=torch.float64) * 2 + 1
    s_real, s_fake = FeatureStats(d), FeatureStats(d)
    s_real.update(real)
    s_fake.update(fake)
    # population: |1|^2 * d + d * (1 - 2)^2 = 2d
    assert frechet_distance(*s_real.mean_cov(), *s_fake.mean_cov()) == pytest.approx(2 * d, rel=0.05)


def test_fid_needs_two_samples():
    stats = FeatureStats(3)
    stats.update(torch.zeros(1, 3))
    with pytest.raises(UserError, match="at least 2 samples"):
        stats.mean_cov()


def _mmd_numpy(x, y):
    """Independent float64 unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3."""
    d, m = x.shape[1], x.shape[0]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()


def test_kid_equals_independent_unbiased_mmd_and_is_near_zero_for_equal_distributions():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((300, 10)), rng.standard_normal((300, 10)) + 0.5
    mean, std = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=1, subset_size=300)
    assert mean == pytest.approx(_mmd_numpy(x, y), rel=1e-9)
    assert std == 0.0
    same_mean, _ = kernel_inception_distance(torch.randn(2000, 10), torch.randn(2000, 10), subsets=20, subset_size=500)
    assert abs(same_mean) < 0.02 < mean


def test_kid_rejects_a_single_sample():
    with pytest.raises(UserError, match="KID needs at least 2"):
        kernel_inception_distance(torch.randn(1, 4), torch.randn(10, 4))


def test_inception_score_is_class_count_for_confident_uniform_and_one_for_collapse():
    confident = torch.full((1000, 10), -50.0)
    confident[torch.arange(1000), (torch.arange(1000) // 10) % 10] = 50.0  # every split sees all classes
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6
    collapsed = torch.full((1000, 10), -50.0)
    collapsed[:, 3] = 50.0
    assert inception_score(collapsed, splits=10)[0] == pytest.approx(1.0, rel=1e-6)


def test_streaming_inception_score_matches_direct_formula():
    logits = torch.randn(600, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    stats = InceptionScoreStats(7, splits=1)
    for chunk in logits.split(37):
        stats.update(chunk)
    p = torch.softmax(logits, 1).numpy()
    py = p.mean(0)
    direct = np.exp((p * (np.log(p) - np.log(py))).sum(1).mean())
    assert stats.score()[0] == pytest.approx(direct, rel=1e-10)


def _pr_bruteforce(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, 1)[:, k]

    def inside(q, s, r):
        return (np.linalg.norm(q[:, None] - s[None], axis=-1) <= r[None]).any(1).mean()

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_match_bruteforce_knn_manifolds():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((200, 5))
    fake = np.concatenate([rng.standard_normal((100, 5)) * 0.5, rng.standard_normal((100, 5)) + 6])
    p, r = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=3, chunk=64)
    bp, br = _pr_bruteforce(real, fake, 3)
    assert (p, r) == pytest.approx((bp, br))
    assert 0.4 < p < 0.6  # half the fakes are far from the data
    assert r < 0.95  # the narrow half misses the real tails
    same = torch.from_numpy(real)
    assert precision_recall(same, same.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_need_more_than_k_samples():
    with pytest.raises(UserError, match="needs more than 3"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)


def test_feature_buffer_keeps_only_its_capacity():
    buf = FeatureBuffer(5)  # keeps global indices 0..4
    buf.update(torch.arange(6.0).reshape(3, 2))
    buf.update(torch.arange(6.0, 12.0).reshape(3, 2))
    out = buf.gather(None)
    assert out.shape == (5, 2) and out[-1].tolist() == [8.0, 9.0]


def test_feature_buffer_orders_by_global_index():
    buf = FeatureBuffer(10)
    buf.update(torch.tensor([[4.0], [5.0]]), start=4)
    buf.update(torch.tensor([[0.0], [1.0]]), start=0)
    buf.update(torch.tensor([[10.0]]), start=10)  # beyond the limit: dropped
    assert buf.gather(None).flatten().tolist() == [0.0, 1.0, 4.0, 5.0]


def test_every_metric_name_resolves_to_its_family_module():
    from gandist.eval.config import METRICS
    from gandist.registry import METRICS as HOMES, resolve

    assert METRICS == ("fid", "kid", "is", "pr", "modes", "intra_fid", "ppl")
    assert resolve(HOMES, "fid", "eval.metrics") is frechet_distance
    assert resolve(HOMES, "kid", "eval.metrics") is kernel_inception_distance
    assert resolve(HOMES, "is", "eval.metrics") is InceptionScoreStats
    assert resolve(HOMES, "pr", "eval.metrics") is precision_recall
    assert resolve(HOMES, "modes", "eval.metrics").__module__ == "gandist.eval.modes"
    assert resolve(HOMES, "intra_fid", "eval.metrics").__module__ == "gandist.eval.intra_fid"
    assert resolve(HOMES, "ppl", "eval.metrics").__module__ == "gandist.eval.ppl"
