"""Fixtures of the telemetry tests: exporters that are always closed, parsed expositions, promtool location."""
from __future__ import annotations

import shutil

import pytest

from gandist.telemetry.config import TelemetryConfig
from gandist.telemetry.metrics import MetricsExporter


@pytest.fixture
def make_exporter():
    """Build exporters that are closed after the test (each has its own registry and maybe an HTTP server)."""
    made = []

    def make(run: str = "unit", rank: int = 0, local_rank: int = 0, **cfg) -> MetricsExporter:
        exporter = MetricsExporter(TelemetryConfig(**cfg), run=run, rank=rank, local_rank=local_rank)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.close()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (Debian package prometheus; .ci/run installs it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's prometheus package (apt-get install -y prometheus)")
    return path
