"""Helpers of the telemetry tests (imported by name: `conftest` is ambiguous across test folders)."""
from __future__ import annotations

import socket

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

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
