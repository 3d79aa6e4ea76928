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
    host: str = Field(
        "127.0.0.1",
        description="Address the metrics endpoint binds to; set 0.0.0.0 in pods so that Prometheus can scrape them.",
    )
    port_search: int = Field(
        32, ge=1, le=1024, description="Ports tried after port + local rank when it is in use (the bound one is logged)."
    )
    sigma_top_k: int = Field(
        4, ge=0, le=64, description="Layers per net exported with their own sigma series (all nets: per-net max too)."
    )
    file_sd_dir: str | None = Field(
        None,
        description="Directory where each rank writes a Prometheus file_sd target file naming the port it bound.",
    )
    tensorboard: bool = Field(False, description="Also write TensorBoard scalars to RUN_DIR/tensorboard (needs tensorboard).")
