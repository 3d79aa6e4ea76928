"""Telemetry overhead: step time with the Prometheus exporter on versus off, in one run of this script.

Two measurements, because a 1% difference drowns in run-to-run noise on a shared machine:
  1. A/B: real trainings alternate off/on (telemetry.port 0 vs a free port, scraped every second like a strict
     Prometheus); medians of wall and of process CPU seconds per step are compared.
  2. Direct: during the "on" runs every publish() and every /metrics render (in the server thread) is timed in
     CPU time of its thread (immune to the process being descheduled). The overhead on a step is then at most
     publish / step time + render / scrape interval (a render holds the GIL, so at worst it stalls the loop for
     that long once per scrape), printed for a 1 s and the usual 15 s scrape interval.

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

PUBLISH_CPU: list[float] = []  # thread CPU seconds per publish()
PUBLISH_WALL: list[float] = []
RENDER_CPU: list[float] = []  # server-thread CPU seconds per /metrics response
SCRAPE_WALL: list[float] = []  # client-side seconds per scrape


class TimedExporter(metrics.MetricsExporter):
    """The real exporter, timing each publish() (the timers cost ~0.2 us, negligible here)."""

    def publish(self, signals) -> None:
        c0, t0 = time.thread_time(), time.perf_counter()
        super().publish(signals)
        PUBLISH_CPU.append(time.thread_time() - c0)
        PUBLISH_WALL.append(time.perf_counter() - t0)


def time_renders() -> None:
    """Wrap prometheus_client's response builder (looked up by name per request) to time each render."""
    from prometheus_client import exposition

    bake = exposition._bake_output

    def timed(*args, **kwargs):
        c0 = time.thread_time()
        try:
            return bake(*args, **kwargs)
        finally:
            RENDER_CPU.append(time.thread_time() - c0)

    exposition._bake_output = timed


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
        SCRAPE_WALL.append(time.perf_counter() - t0)


def one_run(config: str, steps: int, telemetry_on: bool) -> tuple[float, float]:
    """Train once in a fresh run dir; returns (wall, process CPU) seconds per step."""
    port = free_port() if telemetry_on else 0
    overrides = [f"train.steps={steps}", "telemetry.progress=false", f"telemetry.port={port}",
                 "telemetry.sample_every=0", f"checkpoint.every={steps}"]
    cfg = load_config(config, overrides)
    stop = threading.Event()
    thread = threading.Thread(target=scraper, args=(port, stop), daemon=True) if telemetry_on else None
    if thread:
        thread.start()
    with tempfile.TemporaryDirectory() as run_dir:
        cpu0 = time.process_time()
        summary = run_training(cfg, run_dir)
        cpu = time.process_time() - cpu0
    stop.set()
    if thread:
        thread.join()
    steps = max(summary["steps"], 1)
    return summary["wall_seconds"] / steps, cpu / steps


def main(argv=None) -> int:
    """Run the benchmark and print a side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "toy_ring8_tiny.yaml"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    metrics.MetricsExporter = TimedExporter  # the loop imports it from the module when it builds its sinks
    time_renders()
    one_run(args.config, 10, False)  # warm-up: imports, allocator, thread pools
    off, on = [], []
    for i in range(args.repeats):
        off.append(one_run(args.config, args.steps, False))
        on.append(one_run(args.config, args.steps, True))
        print(f"repeat {i + 1}: wall {off[-1][0] * 1e3:.2f} / {on[-1][0] * 1e3:.2f} ms/step, "
              f"cpu {off[-1][1] * 1e3:.2f} / {on[-1][1] * 1e3:.2f} ms/step (off / on)", flush=True)
    wall_off, wall_on = (statistics.median(r[0] for r in runs) for runs in (off, on))
    cpu_off, cpu_on = (statistics.median(r[1] for r in runs) for runs in (off, on))
    spread = (max(r[0] for r in off) - min(r[0] for r in off)) / wall_off
    publish_cpu, render_cpu = statistics.mean(PUBLISH_CPU), statistics.mean(RENDER_CPU or [0])
    print(f"config {args.config}: {args.steps} steps x {args.repeats} runs each, scraped every 1 s when on")
    print(f"{'':30}{'metrics off':>14}{'metrics on':>14}{'on/off':>10}")
    print(f"{'median wall ms per step':30}{wall_off * 1e3:14.2f}{wall_on * 1e3:14.2f}{wall_on / wall_off:10.4f}")
    print(f"{'median CPU ms per step':30}{cpu_off * 1e3:14.2f}{cpu_on * 1e3:14.2f}{cpu_on / cpu_off:10.4f}")
    print(f"{'wall spread between off runs':30}{spread:14.2%}")
    print(f"publish(): {publish_cpu * 1e6:.1f} us CPU ({statistics.mean(PUBLISH_WALL) * 1e6:.1f} us "
          f"wall) mean over {len(PUBLISH_CPU)} calls")
    print(f"/metrics: {render_cpu * 1e3:.2f} ms CPU per render, "
          f"{statistics.mean(SCRAPE_WALL or [0]) * 1e3:.2f} ms wall per scrape, {len(SCRAPE_WALL)} scrapes")
    for interval in (1.0, 15.0):
        bound = publish_cpu / wall_on + render_cpu / interval
        print(f"direct overhead bound, scrape every {interval:g} s: {bound:.3%} of step time "
              f"(publish {publish_cpu / wall_on:.3%} + render {render_cpu / interval:.3%}; target < 1%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
