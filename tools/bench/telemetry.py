"""Telemetry overhead: step time with the Prometheus exporter on versus off, in one run of this script.

Two measurements, because a 1% difference drowns in run-to-run noise on a shared machine:
  1. A/B: real trainings alternate off/on (telemetry.port 0 vs a free port, scraped every second like a strict
     Prometheus); medians of seconds per step are compared.
  2. Direct: during the "on" runs the exporter times its own publish() calls and the scraper times each /metrics
     render; their share of the training wall time is the overhead without the noise.

Usage: .venv/bin/python tools/bench/telemetry.py [--config configs/toy_ring8_tiny.yaml] [--steps 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gandist.config import load_config  # noqa: E402
from gandist.telemetry import metrics  # noqa: E402
from gandist.train.loop import run_training  # noqa: E402

PUBLISH_SECONDS: list[float] = []
SCRAPE_SECONDS: list[float] = []


class TimedExporter(metrics.MetricsExporter):
    """The real exporter, timing each publish() (perf_counter costs ~0.1 us, negligible here)."""

    def publish(self, signals) -> None:
        t0 = time.perf_counter()
        super().publish(signals)
        PUBLISH_SECONDS.append(time.perf_counter() - t0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scraper(port: int, stop: threading.Event) -> None:
    """Scrape /metrics every second, as Prometheus would with scrape_interval 1s (15s is usual)."""
    while not stop.wait(1.0):
        t0 = time.perf_counter()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            continue  # endpoint not up yet / already closed
        SCRAPE_SECONDS.append(time.perf_counter() - t0)


def one_run(config: str, steps: int, telemetry_on: bool) -> float:
    """Train once in a fresh run dir; returns wall seconds per step of the training loop."""
    port = free_port() if telemetry_on else 0
    overrides = [f"train.steps={steps}", "telemetry.progress=false", f"telemetry.port={port}",
                 "telemetry.sample_every=0", f"checkpoint.every={steps}"]
    cfg = load_config(config, overrides)
    stop = threading.Event()
    thread = threading.Thread(target=scraper, args=(port, stop), daemon=True) if telemetry_on else None
    if thread:
        thread.start()
    with tempfile.TemporaryDirectory() as run_dir:
        summary = run_training(cfg, run_dir)
    stop.set()
    if thread:
        thread.join()
    return summary["wall_seconds"] / max(summary["steps"], 1)


def main(argv=None) -> int:
    """Run the benchmark and print a side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "toy_ring8_tiny.yaml"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    metrics.MetricsExporter = TimedExporter  # the loop imports it from the module when it builds its sinks
    one_run(args.config, 10, False)  # warm-up: imports, allocator, thread pools
    off, on = [], []
    for i in range(args.repeats):
        off.append(one_run(args.config, args.steps, False))
        on.append(one_run(args.config, args.steps, True))
        print(f"repeat {i + 1}: {off[-1] * 1e3:.2f} ms/step off, {on[-1] * 1e3:.2f} ms/step on", flush=True)
    off_s, on_s = statistics.median(off), statistics.median(on)
    publish = statistics.mean(PUBLISH_SECONDS)
    scrape_total = sum(SCRAPE_SECONDS)
    on_wall = sum(on) * args.steps
    direct = (sum(PUBLISH_SECONDS) + scrape_total) / on_wall
    spread = (max(off) - min(off)) / off_s
    print(f"config {args.config}: {args.steps} steps x {args.repeats} runs each, scraped every 1 s when on")
    print(f"{'':28}{'metrics off':>14}{'metrics on':>14}{'on/off':>10}")
    print(f"{'median ms per step':28}{off_s * 1e3:14.2f}{on_s * 1e3:14.2f}{on_s / off_s:10.4f}")
    print(f"{'run-to-run spread (off)':28}{spread:14.2%}")
    print(f"publish(): {publish * 1e6:.1f} us mean over {len(PUBLISH_SECONDS)} calls; "
          f"/metrics render: {1e3 * scrape_total / max(len(SCRAPE_SECONDS), 1):.2f} ms x {len(SCRAPE_SECONDS)} scrapes")
    print(f"direct overhead (publish + scrapes) / training wall: {direct:.3%}  (target < 1%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
