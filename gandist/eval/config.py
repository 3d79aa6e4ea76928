"""Config of evaluation during and after training."""
from __future__ import annotations

from pydantic import Field

from gandist.configbase import Section


class EvalConfig(Section):
    """Periodic evaluation and best-checkpoint tracking."""

    every: int = Field(0, ge=0, description="Evaluate every k steps (0: off).")
    metrics: list[str] = Field(default_factory=list, description="Metrics to compute: fid, kid, is, pr, modes.")
    num: int = Field(2000, gt=0, description="Generated samples per evaluation.")
