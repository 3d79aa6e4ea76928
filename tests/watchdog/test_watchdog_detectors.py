"""Detectors on synthetic signal sequences: each rule fires on the pattern it names and stays quiet on noise."""
import math

import numpy as np

from gandist.train.signals import Signals
from gandist.watchdog.config import (
    BoundsConfig,
    DOverpowerConfig,
    NonfiniteConfig,
    SigmaGrowthConfig,
    SpikeConfig,
    WatchdogConfig,
)
from gandist.watchdog.detectors import (
    DIVERGED,
    OK,
    WARN,
    BoundsDetector,
    DOverpowerDetector,
    NonfiniteDetector,
    SigmaGrowthDetector,
    SpikeDetector,
    build_detectors,
    flatten,
    run_detectors,
)


def gan_like_losses(steps, seed=0):
    """Noisy, slowly drifting, heavy-tailed losses like a healthy GAN's (student-t noise, df=3)."""
    rng = np.random.default_rng(seed)
    drift = np.linspace(1.4, 0.9, steps)
    return drift + 0.08 * rng.standard_t(3, size=steps)


def test_flatten_names_every_signal():
    s = Signals(step=3, losses={"G": 1.0, "D/r1": 0.5}, grad_norm={"D": 2.0}, d_real=1.5, d_fake=-0.5,
                sigma={"D/fc": 3.0}, nonfinite=0)
    flat = flatten(s)
    assert flat == {"loss/G": 1.0, "loss/D/r1": 0.5, "grad_norm/D": 2.0, "sigma/D/fc": 3.0, "d_real": 1.5,
                    "d_fake": -0.5, "gap": 2.0, "nonfinite": 0.0}


def test_nonfinite_loss_or_count_diverges_at_once():
    det = NonfiniteDetector(NonfiniteConfig())
    assert det.check(0, {"loss/G": 1.0, "nonfinite": 0.0}) is None
    f = det.check(1, {"loss/G": float("nan"), "nonfinite": 0.0})
    assert f.verdict == DIVERGED and "loss/G" in f.reason
    f = det.check(2, {"loss/G": 1.0, "nonfinite": 7.0})
    assert f.verdict == DIVERGED and f.details["nonfinite"] == 7.0
    assert det.check(3, {"sigma/D/fc": math.inf}).verdict == DIVERGED


def test_spike_detector_is_quiet_on_heavy_tailed_noise():
    det = SpikeDetector(SpikeConfig())
    verdicts = [det.check(i, {"loss/G": float(x), "loss/D": float(y)})
                for i, (x, y) in enumerate(zip(gan_like_losses(5000, 1), gan_like_losses(5000, 2)))]
    assert all(v is None or v.verdict == WARN for v in verdicts)
    assert sum(v is not None for v in verdicts) < 10  # isolated warnings at most


def test_regularizer_terms_are_not_spike_watched_by_default():
    # a converged R1 term jitters around 1e-4 by factors of 2-10: not a divergence (the D loss includes it)
    det = SpikeDetector(SpikeConfig())
    rng = np.random.default_rng(0)
    for i in range(300):
        r1 = 1e-4 * (1.0 if i < 200 else 20.0) * rng.lognormal(0, 0.3)
        assert det.check(i, {"loss/D/r1": r1, "loss/D": 1.38 + 0.01 * rng.standard_normal()}) is None
    watched = SpikeDetector(SpikeConfig(signals=["loss/*"]))  # still available on request
    verdicts = [watched.check(i, {"loss/D/r1": 1e-4 * (1.0 if i < 200 else 20.0)}) for i in range(210)]
    assert verdicts[-1] is not None and verdicts[-1].verdict == DIVERGED


def test_sustained_spike_diverges_after_patience_steps():
    cfg = SpikeConfig(patience=5)
    det = SpikeDetector(cfg)
    losses = gan_like_losses(300)
    for i in range(200):
        assert det.check(i, {"loss/G": float(losses[i])}) is None
    verdicts = [det.check(200 + i, {"loss/G": float(losses[200 + i] * 10)}) for i in range(10)]
    assert [v.verdict for v in verdicts[:4]] == [WARN] * 4
    assert verdicts[4].verdict == DIVERGED
    assert "loss/G spiked" in verdicts[4].reason and verdicts[4].details["loss/G:streak"] == 5.0


def test_spike_detector_waits_for_min_history_and_ignores_unwatched_signals():
    det = SpikeDetector(SpikeConfig(min_history=20, window=50, patience=1))
    for i in range(19):
        assert det.check(i, {"loss/G": 1.0 + 0.01 * (i % 3)}) is None
    assert det.check(19, {"loss/G": 1000.0}) is None  # 19 values of history: not judged yet
    assert det.check(20, {"loss/G": 1000.0}).verdict == DIVERGED
    assert det.check(21, {"d_real": 1e9}) is None  # d_real is not in the default patterns


def test_spike_reset_forgets_history():
    det = SpikeDetector(SpikeConfig(min_history=10, window=20, patience=1))
    for i in range(30):
        det.check(i, {"grad_norm/D": 1.0 + 0.1 * (i % 2)})
    det.reset()
    assert det.check(30, {"grad_norm/D": 100.0}) is None


def sigma_series(steps, growth_per_step, seed=0):
    rng = np.random.default_rng(seed)
    return np.exp(growth_per_step * np.arange(steps)) * (1.0 + 0.02 * rng.standard_normal(steps))


def test_sigma_growth_catches_the_biggan_explosion():
    det = SigmaGrowthDetector(SigmaGrowthConfig(window=100, factor=4.0))
    series = sigma_series(400, 0.0)
    series[200:] = series[200:] * np.exp(0.03 * np.arange(200))  # e^(0.03*100) = 20x over a window
    found = None
    for i, s in enumerate(series):
        f = det.check(i, {"sigma/D/conv1": float(s), "sigma/G/fc": 1.0})
        if f is not None:
            found = (i, f)
            break
    assert found is not None
    step, finding = found
    assert 246 <= step < 280 and finding.verdict == DIVERGED  # 4x takes ln(4)/0.03 = 46 steps of growth
    assert "D/conv1" in finding.reason and finding.details["sigma/D/conv1:growth"] > 4.0


def test_sigma_growth_ignores_noisy_plateau_and_slow_healthy_growth():
    det = SigmaGrowthDetector(SigmaGrowthConfig(window=100, factor=4.0))
    noisy = sigma_series(2000, 0.0, seed=1) * (1 + 0.5 * np.sin(np.arange(2000) / 7.0))
    slow = sigma_series(2000, 0.001, seed=2)  # 7x over 2000 steps, but only 1.1x within any window
    for i in range(2000):
        assert det.check(i, {"sigma/D/a": float(noisy[i]), "sigma/D/b": float(slow[i])}) is None


def test_sigma_growth_counts_repeated_values_once():
    det = SigmaGrowthDetector(SigmaGrowthConfig(window=100, factor=2.0))
    findings = {}
    for i in range(100):  # a plain layer measured every 10 steps reports the same value in between
        findings[i] = det.check(i, {"sigma/G/fc": 1.0 + 0.5 * (i // 10)})
    assert len(det._history["sigma/G/fc"]) == 10
    assert findings[20] is None  # 2.0x: not past the factor yet
    assert findings[30].verdict == DIVERGED  # 2.5x over four distinct, rising measurements
    assert findings[31] is None  # a repeated value is no new measurement


def test_d_overpower_needs_the_whole_window():
    det = DOverpowerDetector(DOverpowerConfig(bound=5.0, window=10))
    assert det.check(0, {"gap": 4.0}) is None
    verdicts = [det.check(1 + i, {"gap": 6.0, "d_real": 3.0, "d_fake": -3.0}).verdict for i in range(10)]
    assert verdicts == [WARN] * 9 + [DIVERGED]
    assert det.check(11, {"gap": 1.0}) is None
    assert det.check(12, {"gap": 6.0}).verdict == WARN  # the streak restarted


def test_bounds_flag_loss_and_grad_norm():
    det = BoundsDetector(BoundsConfig(loss=100.0, grad_norm=1e3))
    assert det.check(0, {"loss/D": -99.0, "grad_norm/G": 999.0}) is None
    assert det.check(1, {"loss/D": -101.0}).verdict == DIVERGED
    f = det.check(2, {"grad_norm/G": 2e3})
    assert f.verdict == DIVERGED and "grad_norm/G" in f.reason


def test_severity_warn_keeps_a_detector_advisory():
    cfg = WatchdogConfig(d_overpower=DOverpowerConfig(bound=1.0, window=2, severity="warn"))
    dets = build_detectors(cfg)
    for i in range(5):
        f = run_detectors(dets, i, {"gap": 10.0, "loss/G": 1.0})
    assert f.verdict == WARN


def test_disabled_detectors_are_not_built():
    cfg = WatchdogConfig(spike=SpikeConfig(enabled=False), sigma_growth=SigmaGrowthConfig(enabled=False))
    names = [type(d).__name__ for d in build_detectors(cfg)]
    assert names == ["NonfiniteDetector", "BoundsDetector", "DOverpowerDetector"]
    assert run_detectors(build_detectors(cfg), 0, {"loss/G": 1.0, "gap": 0.0}) is None
    assert OK == 0
