"""Config of the stability watchdog (monitors, detectors, rollback policy, fault injection)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from gandist.configbase import Section


class InjectConfig(Section):
    """Fault injection for tests and demos (off by default)."""

    kind: Literal["none", "lr_spike", "nan", "d_noise"] = Field("none", description="Which fault to inject.")
    step: int = Field(0, ge=0, description="G step at which the fault is injected.")
    factor: float = Field(100.0, gt=0, description="lr multiplier (lr_spike) or noise std (d_noise).")


class WatchdogConfig(Section):
    """Stability watchdog."""

    enabled: bool = Field(True, description="Monitor signals and roll back on divergence.")
    sigma_every: int = Field(10, ge=1, description="Power-iterate layers without spectral norm every k steps.")
    inject: InjectConfig = Field(default_factory=InjectConfig, description="Fault injection.")
