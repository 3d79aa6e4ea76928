"""Prometheus metrics of one rank: a signal sink (gandist.train.signals) that turns each Signals record into gauges, counters and histograms.

Every rank serves its own endpoint on `telemetry.port + local_rank` (also under Ray Train: each worker is a process
with a local rank), so metric names and labels are the same under torchrun, Ray and Kubernetes. Prometheus pulls;
nothing here ever waits on Prometheus, so an unreachable Prometheus cannot slow or block training.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gandist.fileio import atomic_write_text
from gandist.telemetry.config import TelemetryConfig
from gandist.train.signals import Signals

log = logging.getLogger(__name__)

LABELS = ("run", "rank")
# Seconds buckets from 1 ms to 2 min: covers a tiny CPU step and a StyleGAN2-1024 step with lazy regularization.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
VERDICTS = ("ok", "warn", "diverged")
# Event kinds that get their own label value; anything else is counted as "other" (bounded cardinality).
EVENT_KINDS = ("start", "end", "diverged", "rollback", "checkpoint", "gave_up", "eval")


def event_kind(record: dict) -> str:
    """The kind of an events.jsonl record ("rollback", ...), read from its "event", "kind" or "type" key."""
    for key in ("event", "kind", "type"):
        value = record.get(key)
        if isinstance(value, str):
            return value
    return "other"


def split_loss_key(key: str) -> tuple[str, str | None]:
    """"D/r1" -> ("D", "r1"): a regularizer of D; "G" -> ("G", None): an adversarial loss."""
    net, sep, term = key.partition("/")
    return (net, term) if sep else (key, None)


class _ProcessCollector:
    """Values read when Prometheus scrapes (not per step): memory, CPU time, checkpoint age, GPU memory."""

    def __init__(self, exporter: "MetricsExporter"):
        self.exporter = exporter

    def collect(self):
        """Yield the scrape-time metric families."""
        labels = [self.exporter.run, str(self.exporter.rank)]
        rss = GaugeMetricFamily("gandist_process_resident_memory_bytes", "Resident memory of this rank.", labels=LABELS)
        rss.add_metric(labels, resident_memory_bytes())
        yield rss
        cpu = CounterMetricFamily("gandist_process_cpu_seconds", "User+system CPU time of this rank.", labels=LABELS)
        times = os.times()
        cpu.add_metric(labels, times.user + times.system)
        yield cpu
        age = GaugeMetricFamily(
            "gandist_checkpoint_age_seconds", "Seconds since the last checkpoint (since start if none).", labels=LABELS
        )
        age.add_metric(labels, time.time() - self.exporter.last_checkpoint_time)
        yield age
        yield from gpu_memory_families(labels)


def resident_memory_bytes() -> float:
    """Resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak if sys.platform == "darwin" else peak * 1024)


def gpu_memory_families(labels: list[str]):
    """GPU memory gauges per device, only when this process has already initialized CUDA (never initializes it)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    names = (
        ("gandist_gpu_memory_allocated_bytes", "Bytes held by tensors.", torch.cuda.memory_allocated),
        ("gandist_gpu_memory_reserved_bytes", "Bytes reserved by the caching allocator.", torch.cuda.memory_reserved),
        ("gandist_gpu_memory_max_allocated_bytes", "Peak bytes held by tensors.", torch.cuda.max_memory_allocated),
    )
    for name, doc, read in names:
        family = GaugeMetricFamily(name, doc, labels=[*LABELS, "device"])
        for device in range(torch.cuda.device_count()):
            family.add_metric([*labels, str(device)], float(read(device)))
        yield family


def file_sd_target(run: str, rank: int, host: str, port: int) -> tuple[str, str]:
    """(file name, JSON text) of one rank's Prometheus file_sd target (run and rank come with every series)."""
    return f"gandist-{run}-rank{rank}.json", json.dumps([{"targets": [f"{host}:{port}"]}])


def find_free_port(host: str, first: int, tries: int) -> int | None:
    """The first port in [first, first + tries) that can be bound on host, or None."""
    for port in range(first, min(first + tries, 65536)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # like the HTTP server we start: a port in TIME_WAIT is free, a listening one is not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    return None


class MetricsExporter:
    """Prometheus metrics of one rank, served on cfg.port + local_rank (0: not served, publish() still works)."""

    def __init__(self, cfg: TelemetryConfig, *, run: str, rank: int, local_rank: int):
        self.cfg = cfg
        self.run, self.rank, self.local_rank = run, rank, local_rank
        self.registry = CollectorRegistry(auto_describe=True)
        self.port: int | None = None
        self.start_time = time.time()
        self.last_checkpoint_time = self.start_time
        self._server = None
        self._sd_file: Path | None = None
        self._last_publish: float | None = None
        self._last_images = 0
        self._last_skipped = 0
        self._sigma_layers: set[tuple[str, str]] = set()
        self._children: dict[tuple, object] = {}
        self._define()
        self.registry.register(_ProcessCollector(self))
        if cfg.port:
            self._serve(cfg.port + local_rank)

    # -- metric definitions ------------------------------------------------------------------------------------

    def _define(self) -> None:
        r = self.registry
        g = lambda name, doc, extra=(): Gauge(name, doc, [*LABELS, *extra], registry=r)  # noqa: E731
        c = lambda name, doc, extra=(): Counter(name, doc, [*LABELS, *extra], registry=r)  # noqa: E731
        self.m_step = g("gandist_step", "Last finished G step.")
        self.m_images = c(
            "gandist_images_seen", "Images trained on by the whole run, as counted by this rank (rollbacks included)."
        )
        self.m_img_per_sec = g("gandist_images_per_second", "Training throughput reported by the loop.")
        self.m_phase = Histogram(
            "gandist_phase_seconds", "Seconds per phase (D, G, Dreg, Greg, data).", [*LABELS, "phase"],
            buckets=SECONDS_BUCKETS, registry=r,
        )
        self.m_step_seconds = Histogram(
            "gandist_step_seconds", "Wall seconds between two G steps.", LABELS, buckets=SECONDS_BUCKETS, registry=r
        )
        self.m_data_wait = c("gandist_data_wait_seconds", "Seconds spent waiting for the data loader.")
        self.m_data_wait_last = g("gandist_data_wait_last_seconds", "Data wait of the last G step.")
        self.m_loss = g("gandist_loss", "Adversarial loss per net.", ("net",))
        self.m_reg = g("gandist_regularizer", "Regularizer value (Signals.losses 'NET/NAME').", ("net", "penalty"))
        self.m_d_logit = g(
            "gandist_discriminator_logit_mean", "Mean D logit on the real and on the fake batch.", ("kind",)
        )
        self.m_grad = g("gandist_grad_norm", "Gradient norm per net before clipping.", ("net",))
        self.m_sigma_max = g("gandist_sigma_max", "Largest top singular value over a net's layers.", ("net",))
        self.m_sigma = g("gandist_sigma", "Top singular value of the top-k layers of each net.", ("net", "layer"))
        self.m_lr = g("gandist_learning_rate", "Learning rate per net.", ("net",))
        self.m_ema = g("gandist_ema_relative_distance", "||EMA - G|| / ||G||.")
        self.m_ada_p = g("gandist_ada_p", "ADA's augmentation probability p (augment.ada).")
        self.m_ada_rt = g("gandist_ada_rt", "ADA's overfitting heuristic r_t = E[sign D(real)] at its last adjustment.")
        self.m_nonfinite = c("gandist_nonfinite_values", "Non-finite values seen in losses, logits and gradients.")
        self.m_skipped = c("gandist_skipped_samples", "Samples the data source skipped (corrupt or unreadable).")
        self.m_verdict = g("gandist_watchdog_verdict", "Last watchdog verdict: 0 ok, 1 warn, 2 diverged.")
        self.m_verdicts = c("gandist_watchdog_verdicts", "Watchdog verdicts per G step.", ("verdict",))
        self.m_rollbacks = c("gandist_rollbacks", "Rollbacks to a healthy checkpoint.")
        self.m_last_rollback = g("gandist_last_rollback_timestamp_seconds", "Unix time of the last rollback (0: none).")
        self.m_events = c("gandist_events", "Records written to events.jsonl, by kind.", ("event",))
        self.m_ckpt_seconds = Histogram(
            "gandist_checkpoint_seconds", "Seconds to save a checkpoint.", LABELS, buckets=CHECKPOINT_BUCKETS, registry=r
        )
        self.m_ckpt_time = g("gandist_checkpoint_last_timestamp_seconds", "Unix time of the last checkpoint (start if none).")
        self.m_ckpt_step = g("gandist_checkpoint_step", "Step of the last checkpoint.")
        self.m_start = g("gandist_start_timestamp_seconds", "Unix time this rank started.")
        # Create the run's series now, so that counters read 0 (not "no data") before their first event and
        # increase()/rate() see the first rollback.
        for verdict in VERDICTS:
            self._child(self.m_verdicts, verdict)
        for kind in (*EVENT_KINDS, "other"):
            self._child(self.m_events, kind)
        for metric in (self.m_rollbacks, self.m_nonfinite, self.m_skipped, self.m_data_wait, self.m_images):
            self._child(metric)
        self._child(self.m_last_rollback).set(0)
        self._child(self.m_ckpt_seconds)
        self._child(self.m_step_seconds)
        self._child(self.m_ckpt_time).set(self.start_time)
        self._child(self.m_ckpt_step).set(0)
        self._child(self.m_start).set(self.start_time)
        self._child(self.m_step).set(0)
        self._child(self.m_verdict).set(0)

    def _child(self, metric, *extra: str):
        """The labelled child (run, rank, *extra), cached: labels() costs a lock and a dict lookup each call."""
        key = (id(metric), extra)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.run, str(self.rank), *extra)
        return child

    # -- serving -----------------------------------------------------------------------------------------------

    def _serve(self, wanted: int) -> None:
        from prometheus_client import start_http_server

        host = self.cfg.host
        port = find_free_port(host, wanted, self.cfg.port_search)
        if port is None:
            log.warning(
                "metrics: ports %d-%d on %s are all in use; rank %d serves no metrics (set telemetry.port to a free "
                "range)", wanted, wanted + self.cfg.port_search - 1, host, self.rank,
            )
            return
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:  # lost a race for the port: training goes on without an endpoint
            log.warning("metrics: could not serve on %s:%d (%s); rank %d serves no metrics", host, port, err, self.rank)
            return
        self.port = port
        if port != wanted:
            log.warning("metrics: port %d is in use; rank %d serves metrics on %s:%d instead", wanted, self.rank, host, port)
        else:
            log.info("metrics: rank %d serves http://%s:%d/metrics", self.rank, host, port)
        if self.cfg.file_sd_dir:
            self._write_file_sd(port)

    def _write_file_sd(self, port: int) -> None:
        """A Prometheus file_sd target for this rank: Prometheus finds it even when the port moved."""
        host = socket.gethostname() if self.cfg.host in ("0.0.0.0", "") else self.cfg.host
        name, text = file_sd_target(self.run, self.rank, host, port)
        try:
            directory = Path(self.cfg.file_sd_dir)
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / name
            atomic_write_text(path, text)  # Prometheus never reads a half-written file
            self._sd_file = path
        except OSError as err:
            log.warning("metrics: could not write the file_sd target in %s (%s)", self.cfg.file_sd_dir, err)

    # -- signal sink --------------------------------------------------------------------------------------------

    def publish(self, signals: Signals) -> None:
        """Record one G step's signals (called by the loop after every G step; a few tens of microseconds)."""
        now = time.perf_counter()
        c = self._child
        c(self.m_step).set(signals.step)
        if signals.images_seen > self._last_images:
            c(self.m_images).inc(signals.images_seen - self._last_images)
        self._last_images = signals.images_seen  # a rollback moves it back; the counter only counts work done
        c(self.m_img_per_sec).set(signals.img_per_sec)
        for phase, seconds in signals.seconds.items():
            c(self.m_phase, phase).observe(seconds)
        if self._last_publish is not None:
            c(self.m_step_seconds).observe(now - self._last_publish)
        self._last_publish = now
        c(self.m_data_wait).inc(max(signals.data_wait, 0.0))
        c(self.m_data_wait_last).set(signals.data_wait)
        for key, value in signals.losses.items():
            net, term = split_loss_key(key)
            if term is None:
                c(self.m_loss, net).set(value)
            else:
                c(self.m_reg, net, term).set(value)
        c(self.m_d_logit, "real").set(signals.d_real)
        c(self.m_d_logit, "fake").set(signals.d_fake)
        if signals.ada_p is not None:  # only runs with augment.ada have the series
            c(self.m_ada_p).set(signals.ada_p)
            c(self.m_ada_rt).set(signals.ada_rt)
        for net, norm in signals.grad_norm.items():
            c(self.m_grad, net).set(norm)
        for net, lr in signals.lr.items():
            c(self.m_lr, net).set(lr)
        if signals.sigma:
            self._publish_sigma(signals.sigma)
        if signals.ema_distance is not None:
            c(self.m_ema).set(signals.ema_distance)
        if signals.nonfinite:
            c(self.m_nonfinite).inc(signals.nonfinite)
        if signals.skipped_samples > self._last_skipped:
            c(self.m_skipped).inc(signals.skipped_samples - self._last_skipped)
        self._last_skipped = max(self._last_skipped, signals.skipped_samples)
        verdict = signals.verdict if signals.verdict in VERDICTS else "warn"
        c(self.m_verdicts, verdict).inc()
        c(self.m_verdict).set(VERDICTS.index(verdict))

    def _publish_sigma(self, sigma: dict[str, float]) -> None:
        """Per-net max, plus the k largest layers per net; layers that leave the top k lose their series."""
        by_net: dict[str, list[tuple[float, str]]] = {}
        for key, value in sigma.items():
            net, _, layer = key.partition("/")
            by_net.setdefault(net, []).append((value, layer or net))
        shown: set[tuple[str, str]] = set()
        for net, values in by_net.items():
            values.sort(reverse=True)
            self._child(self.m_sigma_max, net).set(values[0][0])
            for value, layer in values[: self.cfg.sigma_top_k]:
                self._child(self.m_sigma, net, layer).set(value)
                shown.add((net, layer))
        for net, layer in self._sigma_layers - shown:
            self.m_sigma.remove(self.run, str(self.rank), net, layer)
            self._children.pop((id(self.m_sigma), (net, layer)), None)
        self._sigma_layers = shown

    def event(self, record: dict) -> None:
        """Count an events.jsonl record; rollbacks also set the rollback counter and timestamp."""
        kind = event_kind(record)
        self._child(self.m_events, kind if kind in EVENT_KINDS else "other").inc()
        if kind == "rollback":
            self._child(self.m_rollbacks).inc()
            self._child(self.m_last_rollback).set(time.time())

    def checkpoint_saved(self, step: int, seconds: float) -> None:
        """Record a finished checkpoint save (its duration and when it happened)."""
        self.last_checkpoint_time = time.time()
        self._child(self.m_ckpt_seconds).observe(seconds)
        self._child(self.m_ckpt_time).set(self.last_checkpoint_time)
        self._child(self.m_ckpt_step).set(step)

    def close(self) -> None:
        """Stop serving and remove this rank's file_sd target; safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._sd_file is not None:
            self._sd_file.unlink(missing_ok=True)
            self._sd_file = None
