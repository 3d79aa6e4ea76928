"""Fixtures of the telemetry tests: exporters that are always closed, parsed expositions, promtool location."""
from __future__ import annotations

import shutil
import socket

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gandist.telemetry.config import TelemetryConfig
from gandist.telemetry.metrics import MetricsExporter


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, frozenset of label items) -> value, from Prometheus text format."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def scrape(exporter: MetricsExporter) -> dict[tuple[str, frozenset], float]:
    """What Prometheus would read from this exporter now (rendered from its own registry)."""
    return parse_exposition(generate_latest(exporter.registry).decode())


def value(samples: dict, name: str, **labels: str) -> float:
    """The one sample `name` whose labels include `labels`; fails when there is none or several."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
