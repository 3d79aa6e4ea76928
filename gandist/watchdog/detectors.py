"""Detectors: rules over signal histories that turn a step's signals into a verdict (ok, warn, diverged).

Each detector is a small class with `check(step, values) -> Finding | None` over a flat {name: float} record (see
`flatten`) and `reset()`; they know nothing about training, so they unit-test on synthetic sequences.
"""
from __future__ import annotations

import fnmatch
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gandist.registry import DETECTORS, resolve
from gandist.train.signals import Signals
from gandist.watchdog.config import (
    BoundsConfig,
    DOverpowerConfig,
    NonfiniteConfig,
    SigmaGrowthConfig,
    SpikeConfig,
    WatchdogConfig,
)

VERDICTS = ("ok", "warn", "diverged")
OK, WARN, DIVERGED = 0, 1, 2
MAD_TO_STD = 1.4826  # MAD * this = std for normal data


@dataclass
class Finding:
    """What a detector saw: verdict code, a one-line reason and the signal values behind it."""

    verdict: int
    reason: str
    details: dict[str, float] = field(default_factory=dict)


def flatten(signals: Signals) -> dict[str, float]:
    """The record as {name: float}: loss/<key>, grad_norm/<net>, d_real, d_fake, gap, sigma/<net>/<layer>."""
    out: dict[str, float] = {f"loss/{k}": float(v) for k, v in signals.losses.items()}
    out.update({f"grad_norm/{k}": float(v) for k, v in signals.grad_norm.items()})
    out.update({f"sigma/{k}": float(v) for k, v in signals.sigma.items()})
    out["d_real"] = float(signals.d_real)
    out["d_fake"] = float(signals.d_fake)
    out["gap"] = out["d_real"] - out["d_fake"]
    out["nonfinite"] = float(signals.nonfinite)
    return out


def _severity(name: str) -> int:
    return VERDICTS.index(name)


class NonfiniteDetector:
    """NaN or Inf anywhere in the record, or a non-zero non-finite count: diverged at once."""

    statistical = False

    def __init__(self, cfg: NonfiniteConfig) -> None:
        self.cfg = cfg

    def check(self, step: int, values: dict[str, float]) -> Finding | None:
        """Diverged when any value is not finite or non-finite gradient elements were counted."""
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if values.get("nonfinite", 0.0) > 0:
            bad["nonfinite"] = values["nonfinite"]
        if not bad:
            return None
        names = ", ".join(sorted(bad)[:5])
        return Finding(DIVERGED, f"non-finite values in {names}", dict(sorted(bad.items())[:20]))

    def reset(self) -> None:
        """Stateless."""


class SpikeDetector:
    """A value more than k robust standard deviations (1.4826 * MAD) from its running median."""

    statistical = True  # judged only after watchdog.warmup

    def __init__(self, cfg: SpikeConfig) -> None:
        self.cfg = cfg
        self._history: dict[str, deque] = {}
        self._streak: dict[str, int] = {}

    def _watched(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.cfg.signals)

    def _log_scale(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.cfg.log_scale)

    def check(self, step: int, values: dict[str, float]) -> Finding | None:
        """Warn on a spike; `severity` after `patience` consecutive spikes of one signal."""
        worst: Finding | None = None
        for name, x in values.items():
            if not self._watched(name) or not math.isfinite(x):
                continue
            hist = self._history.setdefault(name, deque(maxlen=self.cfg.window))
            finding = self._judge(name, x, hist)
            hist.append(x)  # spikes join the history too: a lasting regime change stops being a spike
            if finding is not None and (worst is None or finding.verdict > worst.verdict):
                worst = finding
        return worst

    def _judge(self, name: str, x: float, hist: deque) -> Finding | None:
        if len(hist) < self.cfg.min_history:
            return None
        arr = np.fromiter(hist, dtype=np.float64, count=len(hist))
        median = float(np.median(arr))
        if self._log_scale(name) and x > 0 and arr.min() > 0:
            arr, value = np.log(arr), math.log(x)
        else:
            value = x
        centre = float(np.median(arr))
        scale = MAD_TO_STD * float(np.median(np.abs(arr - centre)))
        deviation = abs(value - centre)
        spike = deviation > self.cfg.k * scale and abs(x - median) > self.cfg.min_relative * abs(median) and deviation > 0
        if not spike:
            self._streak[name] = 0
            return None
        streak = self._streak.get(name, 0) + 1
        self._streak[name] = streak
        verdict = _severity(self.cfg.severity) if streak >= self.cfg.patience else WARN
        z = deviation / scale if scale > 0 else float("inf")
        return Finding(
            verdict,
            f"{name} spiked to {x:.4g} vs running median {median:.4g} ({z:.1f} robust std) for {streak} step(s)",
            {name: x, f"{name}:median": median, f"{name}:robust_z": z, f"{name}:streak": float(streak)},
        )

    def reset(self) -> None:
        """Forget histories (after a rollback the replayed steps rebuild them)."""
        self._history.clear()
        self._streak.clear()


class SigmaGrowthDetector:
    """A layer whose top singular value grew by `factor` within the window, increasing at most checks."""

    statistical = True  # judged only after watchdog.warmup

    def __init__(self, cfg: SigmaGrowthConfig) -> None:
        self.cfg = cfg
        self._history: dict[str, deque] = {}  # name -> (step, sigma) of distinct measurements

    def check(self, step: int, values: dict[str, float]) -> Finding | None:
        """Severity verdict for the layer that grew most, when it grew past the factor in a sustained way."""
        worst: Finding | None = None
        worst_ratio = 0.0
        for name, sigma in values.items():
            if not name.startswith("sigma/") or not math.isfinite(sigma):
                continue
            hist = self._history.setdefault(name, deque())
            if hist and hist[-1][1] == sigma:
                continue  # unchanged value between power-iteration checks is not a new measurement
            hist.append((step, sigma))
            while hist and hist[0][0] < step - self.cfg.window:
                hist.popleft()
            ratio = self._sustained_growth(hist)
            if ratio > self.cfg.factor and ratio > worst_ratio:
                worst_ratio = ratio
                worst = Finding(
                    _severity(self.cfg.severity),
                    f"{name[6:]} top singular value grew {ratio:.2f}x within {self.cfg.window} steps",
                    {name: sigma, f"{name}:growth": ratio},
                )
        return worst

    def _sustained_growth(self, hist: deque) -> float:
        # Growth from the window's lowest point to now, counted only when most checks since that low rose.
        sigmas = np.array([s for _, s in hist])
        low = int(np.argmin(sigmas))
        since_low = sigmas[low:]
        if len(since_low) < 3 or sigmas[low] <= 0:
            return 1.0
        if float(np.mean(np.diff(since_low) > 0)) < self.cfg.monotone_fraction:
            return 1.0
        return float(sigmas[-1] / sigmas[low])

    def reset(self) -> None:
        """Forget histories."""
        self._history.clear()


class DOverpowerDetector:
    """D(real) - D(fake) above the bound for `window` consecutive steps: D wins outright and G gets no signal."""

    statistical = True  # judged only after watchdog.warmup

    def __init__(self, cfg: DOverpowerConfig) -> None:
        self.cfg = cfg
        self._streak = 0

    def check(self, step: int, values: dict[str, float]) -> Finding | None:
        """Warn while the gap is above the bound; severity once it stayed there for the whole window."""
        gap = values.get("gap", 0.0)
        if not math.isfinite(gap) or gap <= self.cfg.bound:
            self._streak = 0
            return None
        self._streak += 1
        verdict = _severity(self.cfg.severity) if self._streak >= self.cfg.window else WARN
        return Finding(
            verdict,
            f"D overpowers G: D(real)-D(fake) gap {gap:.3g} > {self.cfg.bound:g} for {self._streak} step(s)",
            {"gap": gap, "d_real": values.get("d_real", 0.0), "d_fake": values.get("d_fake", 0.0)},
        )

    def reset(self) -> None:
        """Forget the streak."""
        self._streak = 0


class BoundsDetector:
    """Any |loss| or per-net gradient norm past its absolute bound: diverged at once."""

    statistical = False

    def __init__(self, cfg: BoundsConfig) -> None:
        self.cfg = cfg

    def check(self, step: int, values: dict[str, float]) -> Finding | None:
        """Diverged naming the first signal past its bound."""
        for name, x in values.items():
            if name.startswith("loss/") and abs(x) > self.cfg.loss:
                return Finding(DIVERGED, f"{name} = {x:.4g} is past the bound {self.cfg.loss:g}", {name: x})
            if name.startswith("grad_norm/") and x > self.cfg.grad_norm:
                return Finding(DIVERGED, f"{name} = {x:.4g} is past the bound {self.cfg.grad_norm:g}", {name: x})
        return None

    def reset(self) -> None:
        """Stateless."""


def build_detectors(cfg: WatchdogConfig) -> list:
    """The enabled detectors, in gandist/registry.py's DETECTORS order (cheapest and most decisive first)."""
    sections = {name: getattr(cfg, name) for name in DETECTORS}
    return [resolve(DETECTORS, name, "watchdog detector")(section)
            for name, section in sections.items() if section.enabled]


def run_detectors(detectors: list, step: int, values: dict[str, float], warmup: int = 0) -> Finding | None:
    """Worst finding over all detectors; statistical ones join once `step` reaches `warmup`."""
    worst: Finding | None = None
    for detector in detectors:
        if detector.statistical and step < warmup:
            continue
        finding = detector.check(step, values)
        if finding is not None and (worst is None or finding.verdict > worst.verdict):
            worst = finding
    return worst
