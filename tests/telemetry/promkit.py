"""Helpers of the telemetry tests (imported by name: `conftest` is ambiguous across test folders)."""
from __future__ import annotations

import socket
import subprocess
import urllib.request

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


def fetch_metrics(url: str) -> str:
    """The exposition text a live /metrics endpoint serves now, read over HTTP as Prometheus reads it."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def promtool_findings(promtool: str, text: str) -> str:
    """What `promtool check metrics` reports about an exposition ("" when clean: exit 0 and nothing printed)."""
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    findings = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and not findings:
        findings = f"promtool check metrics exited with {result.returncode} and printed nothing"
    return findings


def assert_promtool_clean(promtool: str, urls: list[str]) -> None:
    """Scrape each endpoint and fail with promtool's findings for every one it flags."""
    flagged = []
    for url in urls:
        text = fetch_metrics(url)
        assert "gandist_step" in text, f"{url} serves no gandist metrics:\n{text[:2000]}"
        findings = promtool_findings(promtool, text)
        if findings:
            flagged.append(f"{url}:\n{findings}")
    assert not flagged, "`promtool check metrics` flags these scrapes:\n" + "\n".join(flagged)
