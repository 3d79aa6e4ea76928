"""Config of the stability watchdog (monitors, detectors, rollback policy, fault injection)."""
from __future__ import annotations

from typing import Literal

import math

from pydantic import Field, field_validator, model_validator

from gandist.configbase import Section

Severity = Literal["warn", "diverged"]


class InjectConfig(Section):
    """Fault injection for tests and demos (off by default)."""

    kind: Literal["none", "lr_spike", "nan", "d_noise"] = Field("none", description="Which fault to inject.")
    step: int = Field(0, ge=0, description="G step at which the fault is injected.")
    factor: float = Field(100.0, gt=0, description="lr multiplier (lr_spike) or noise std (d_noise).")
    repeat: bool = Field(
        False, description="Inject again each time a rollback replays the step (a persistent fault, e.g. bad hardware)."
    )

    @field_validator("kind", mode="before")
    @classmethod
    def _nan_is_a_name(cls, kind):
        # `--set watchdog.inject.kind=nan` is parsed as YAML, which reads the word nan as the float NaN
        return "nan" if isinstance(kind, float) and math.isnan(kind) else kind


class NonfiniteConfig(Section):
    """NaN/Inf in losses, logits, gradients or sigmas: diverged at once."""

    enabled: bool = Field(True, description="Check for non-finite values every step.")


class SpikeConfig(Section):
    """A signal far from its running median, in units of its median absolute deviation (MAD)."""

    enabled: bool = Field(True, description="Run the spike detector.")
    signals: list[str] = Field(
        # not the regularizer terms (loss/D/r1, ...): near equilibrium they are ~1e-4 and double from step to step
        # (a 16k-step ring8 run gave up at step 13940 on loss/D/r1 while improving); the total D and G losses
        # include them, and grad_norm/* sees a regularizer that really blows up
        default_factory=lambda: ["loss/D", "loss/G", "grad_norm/*"],
        description="Signal names (fnmatch patterns) watched: loss/<key> (loss/D/r1 for a regularizer), "
        "grad_norm/<net>, gap, d_real, d_fake.",
    )
    log_scale: list[str] = Field(
        default_factory=lambda: ["grad_norm/*"],
        description="Positive, heavy-tailed signals (fnmatch patterns) judged on log(x): a gradient norm that "
        "doubles is as unusual at 0.1 as at 10.",
    )
    k: float = Field(10.0, gt=0, description="A value is a spike when |x - median| > k * 1.4826 * MAD.")
    min_relative: float = Field(
        1.0, ge=0, description="...and when |x - median| > min_relative * |median| (ignores tiny-MAD jitter)."
    )
    window: int = Field(200, ge=2, description="Running window (steps) of the median and MAD.")
    min_history: int = Field(50, ge=2, description="Steps of history before the detector judges.")
    patience: int = Field(5, ge=1, description="Consecutive spikes of one signal that make a divergence (fewer: warn).")
    severity: Severity = Field("diverged", description="Verdict after `patience` consecutive spikes.")

    @model_validator(mode="after")
    def _history_fits_window(self) -> "SpikeConfig":
        if self.min_history > self.window:
            raise ValueError(
                f"watchdog.spike.min_history ({self.min_history}) is larger than watchdog.spike.window "
                f"({self.window}): the detector could never judge; lower min_history or raise window"
            )
        return self


class SigmaGrowthConfig(Section):
    """Sustained growth of a layer's top singular value over a window (BigGAN, Brock et al. 2019, sec. 4.1)."""

    enabled: bool = Field(True, description="Run the sigma-growth detector.")
    window: int = Field(300, ge=1, description="Window (G steps) over which growth is measured.")
    factor: float = Field(4.0, gt=1, description="sigma(now) / min sigma over the window above this is growth.")
    monotone_fraction: float = Field(
        0.8, gt=0, le=1, description="Fraction of sigma checks in the window that must increase (sustained, not noise)."
    )
    severity: Severity = Field("diverged", description="Verdict when a layer's sigma grows that way.")


class DOverpowerConfig(Section):
    """D overpowering G: mean D(real) - D(fake) logit gap above a bound for a whole window."""

    enabled: bool = Field(True, description="Run the D-overpower detector.")
    bound: float = Field(20.0, gt=0, description="Gap in logits above which D is overpowering G.")
    window: int = Field(50, ge=1, description="Consecutive G steps the gap must stay above the bound.")
    severity: Severity = Field("diverged", description="Verdict when D overpowers G for the whole window.")


class BoundsConfig(Section):
    """Absolute bounds on losses and gradient norms: crossing one is diverged at once."""

    enabled: bool = Field(True, description="Check the absolute bounds.")
    loss: float = Field(1e4, gt=0, description="Largest |loss| of any term that is still sane.")
    grad_norm: float = Field(1e6, gt=0, description="Largest per-net gradient norm (before clipping) that is still sane.")


class MitigationConfig(Section):
    """What the loop changes after each rollback (any combination)."""

    lr_scale: float = Field(0.5, gt=0, le=1, description="Multiply both learning rates by this (cumulative) per rollback.")
    skip_batches: int = Field(0, ge=0, description="Skip this many data batches after the rollback.")
    reseed: bool = Field(True, description="Draw the latent noise from a new seed after the rollback.")
    r1_scale: float = Field(1.0, gt=0, description="Multiply R1 penalties' weight by this (cumulative) per rollback.")


class WatchdogConfig(Section):
    """Stability watchdog."""

    enabled: bool = Field(True, description="Monitor signals and roll back on divergence.")
    sigma_every: int = Field(10, ge=1, description="Power-iterate layers without spectral norm every k steps.")
    ema_every: int = Field(10, ge=1, description="Measure the EMA-vs-G weight distance every k steps.")
    warmup: int = Field(
        200, ge=0, description="Steps from the start before the statistical detectors (spike, sigma growth, D "
        "overpower) judge: a GAN's first steps change every signal fast and legitimately."
    )
    healthy_window: int = Field(50, ge=1, description="A checkpoint is healthy when this many steps before it were ok.")
    max_rollbacks: int = Field(3, ge=0, description="Rollbacks allowed within rollback_window steps; one more stops (exit 3).")
    rollback_window: int = Field(1000, ge=1, description="G steps over which rollbacks are counted.")
    nonfinite: NonfiniteConfig = Field(default_factory=NonfiniteConfig, description="Non-finite detector.")
    spike: SpikeConfig = Field(default_factory=SpikeConfig, description="Median/MAD spike detector.")
    sigma_growth: SigmaGrowthConfig = Field(default_factory=SigmaGrowthConfig, description="Sigma-growth detector.")
    d_overpower: DOverpowerConfig = Field(default_factory=DOverpowerConfig, description="D-overpower detector.")
    bounds: BoundsConfig = Field(default_factory=BoundsConfig, description="Absolute-bound detector.")
    mitigation: MitigationConfig = Field(default_factory=MitigationConfig, description="Mitigation per rollback.")
    inject: InjectConfig = Field(default_factory=InjectConfig, description="Fault injection.")

    @model_validator(mode="after")
    def _windows_cover_check_interval(self) -> "WatchdogConfig":
        # Sigma of plain layers is measured every sigma_every steps: a shorter window holds at most one measurement,
        # so growth over it can never be seen.
        if self.sigma_growth.enabled and self.sigma_growth.window < 2 * self.sigma_every:
            raise ValueError(
                f"watchdog.sigma_growth.window ({self.sigma_growth.window}) must be at least twice "
                f"watchdog.sigma_every ({self.sigma_every}) to hold two sigma checks; raise the window or check more often"
            )
        return self
