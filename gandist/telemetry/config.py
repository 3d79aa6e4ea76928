"""Config of telemetry: Prometheus endpoint, logs, samples."""
from __future__ import annotations

from pydantic import Field

from gandist.configbase import Section


class TelemetryConfig(Section):
    """Metrics, logs and sample grids."""

    port: int = Field(0, ge=0, le=65535, description="Prometheus endpoint port (+ local rank); 0: off.")
    log_every: int = Field(10, ge=1, description="Write a metrics.jsonl line every k steps.")
    sample_every: int = Field(500, ge=0, description="Write a sample grid every k steps (0: only at the end).")
    sample_num: int = Field(64, ge=1, description="Images in a sample grid (points in a toy2d scatter: x16).")
    progress: bool = Field(True, description="Show a progress bar on rank 0.")
