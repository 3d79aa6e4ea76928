"""MetricsExporter: the Signals record becomes correctly named, labelled series; serving never blocks training."""
from __future__ import annotations

import json
import logging
import socket
import time
import urllib.request

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from promkit import assert_promtool_clean, free_port, parse_exposition, promtool_findings, scrape, value

from gandist.train.signals import Signals


def signals(step: int = 7, **kw) -> Signals:
    base = dict(
        step=step, images_seen=64 * step, losses={"G": 0.75, "D": 1.25, "D/r1": 0.03125, "G/path_length": 0.5},
        d_real=0.5, d_fake=-1.5, grad_norm={"G": 2.0, "D": 3.0}, seconds={"D": 0.02, "G": 0.01, "Dreg": 0.004},
        data_wait=0.005, img_per_sec=640.0, lr={"G": 1e-4, "D": 4e-4}, ema_distance=0.125, skipped_samples=3,
        sigma={"D/a": 1.0, "D/b": 4.0, "D/c": 2.0, "D/d": 3.0, "G/x": 0.5},
    )
    base.update(kw)
    return Signals(**base)


def test_publish_exports_every_signal_with_run_and_rank_labels(make_exporter):
    exporter = make_exporter(run="ring8", rank=3, local_rank=1)
    exporter.publish(signals())
    s = scrape(exporter)
    lab = {"run": "ring8", "rank": "3"}
    assert value(s, "gandist_step", **lab) == 7
    assert value(s, "gandist_images_seen_total", **lab) == 448
    assert value(s, "gandist_images_per_second", **lab) == 640
    assert value(s, "gandist_loss", net="G", **lab) == 0.75
    assert value(s, "gandist_loss", net="D", **lab) == 1.25
    assert value(s, "gandist_regularizer", net="D", penalty="r1", **lab) == 0.03125
    assert value(s, "gandist_regularizer", net="G", penalty="path_length", **lab) == 0.5
    assert value(s, "gandist_discriminator_logit_mean", kind="real", **lab) == 0.5
    assert value(s, "gandist_discriminator_logit_mean", kind="fake", **lab) == -1.5
    assert value(s, "gandist_grad_norm", net="D", **lab) == 3.0
    assert value(s, "gandist_learning_rate", net="D", **lab) == 4e-4
    assert value(s, "gandist_ema_relative_distance", **lab) == 0.125
    assert value(s, "gandist_skipped_samples_total", **lab) == 3
    assert value(s, "gandist_data_wait_seconds_total", **lab) == 0.005
    assert value(s, "gandist_phase_seconds_count", phase="Dreg", **lab) == 1
    assert value(s, "gandist_phase_seconds_sum", phase="D", **lab) == 0.02
    # 0.02 s lands in the 0.025 bucket, not in the 0.01 one
    assert value(s, "gandist_phase_seconds_bucket", phase="D", le="0.01", **lab) == 0
    assert value(s, "gandist_phase_seconds_bucket", phase="D", le="0.025", **lab) == 1
    assert value(s, "gandist_watchdog_verdicts_total", verdict="ok", **lab) == 1
    assert value(s, "gandist_process_resident_memory_bytes", **lab) > 10e6  # a Python process with torch
    assert {labels for (name, labels) in s if name.startswith("gandist_")} and all(
        dict(labels).get("run") == "ring8" and dict(labels).get("rank") == "3"
        for (name, labels) in s if name.startswith("gandist_")
    )


def test_metric_names_follow_prometheus_conventions(make_exporter):
    exporter = make_exporter()
    exporter.publish(signals())
    exporter.checkpoint_saved(7, 0.5)
    names = {name for name, _ in scrape(exporter)}
    assert all(n.startswith("gandist_") for n in names)
    counters = {"gandist_images_seen_total", "gandist_rollbacks_total", "gandist_skipped_samples_total",
                "gandist_watchdog_verdicts_total", "gandist_events_total", "gandist_data_wait_seconds_total",
                "gandist_nonfinite_values_total", "gandist_process_cpu_seconds_total"}
    assert counters <= names
    for histogram in ("gandist_phase_seconds", "gandist_step_seconds", "gandist_checkpoint_seconds"):
        assert {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"} <= names
    assert not [n for n in names if n.endswith(("_ms", "_milliseconds", "_kb", "_mb"))]


def test_a_live_scrape_passes_promtool_check_metrics(make_exporter, promtool):
    exporter = make_exporter(run="lint", rank=1, port=free_port())
    # every family with samples: losses, regularizers, sigma, verdicts, events, a rollback, a checkpoint
    exporter.publish(signals(step=1))
    exporter.publish(signals(step=2, verdict="diverged", nonfinite=2))
    exporter.event({"event": "rollback", "reason": "nonfinite", "checkpoint_step": 1})
    exporter.checkpoint_saved(step=2, seconds=0.25)
    exporter.publish(signals(step=2))
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    assert value(parse_exposition(urllib.request.urlopen(url, timeout=10).read().decode()),
                 "gandist_discriminator_logit_mean", kind="fake", run="lint", rank="1") == -1.5
    assert_promtool_clean(promtool, [url])


def test_promtool_check_flags_an_abbreviated_unit(promtool):
    # the lint can fail: the name this metric had before promtool was run on it ("_d_" reads as days)
    registry = CollectorRegistry()
    Gauge("gandist_d_output", "Mean D logit.", ["kind"], registry=registry).labels("real").set(0.5)
    findings = promtool_findings(promtool, generate_latest(registry).decode())
    assert "gandist_d_output metric names should not contain abbreviated units" in findings


def test_cumulative_fields_count_work_done_even_after_a_rollback(make_exporter):
    exporter = make_exporter()
    exporter.publish(signals(step=10, images_seen=640, skipped_samples=2))
    exporter.publish(signals(step=5, images_seen=320, skipped_samples=2))  # rolled back to step 5
    exporter.publish(signals(step=6, images_seen=384, skipped_samples=5))
    s = scrape(exporter)
    assert value(s, "gandist_step") == 6
    assert value(s, "gandist_images_seen_total") == 640 + 64  # counters never go down
    assert value(s, "gandist_skipped_samples_total") == 5
    assert value(s, "gandist_step_seconds_count") == 2  # intervals between three publishes


def test_sigma_exports_per_net_max_and_only_top_k_layers(make_exporter):
    exporter = make_exporter(sigma_top_k=2)
    exporter.publish(signals())
    s = scrape(exporter)
    assert value(s, "gandist_sigma_max", net="D") == 4.0
    assert value(s, "gandist_sigma_max", net="G") == 0.5
    layers = {dict(ls)["layer"] for (n, ls) in s if n == "gandist_sigma" and dict(ls)["net"] == "D"}
    assert layers == {"b", "d"}
    # layer a overtakes: its series appears and c's... and b's is removed, keeping the count at k per net
    exporter.publish(signals(sigma={"D/a": 9.0, "D/b": 1.0, "D/c": 2.0, "D/d": 3.0}))
    s = scrape(exporter)
    layers = {dict(ls)["layer"]: v for (n, ls), v in s.items() if n == "gandist_sigma" and dict(ls)["net"] == "D"}
    assert layers == {"a": 9.0, "d": 3.0}
    assert value(s, "gandist_sigma_max", net="D") == 9.0


def test_watchdog_verdicts_and_rollback_events_are_counted(make_exporter):
    exporter = make_exporter()
    exporter.publish(signals(verdict="ok"))
    exporter.publish(signals(verdict="diverged", nonfinite=4))
    before = time.time()
    exporter.event({"event": "diverged", "reason": "nonfinite"})
    exporter.event({"event": "rollback", "reason": "nonfinite", "checkpoint_step": 5})
    exporter.event({"event": "something-new"})
    s = scrape(exporter)
    assert value(s, "gandist_watchdog_verdicts_total", verdict="diverged") == 1
    assert value(s, "gandist_watchdog_verdicts_total", verdict="ok") == 1
    assert value(s, "gandist_watchdog_verdict") == 2
    assert value(s, "gandist_nonfinite_values_total") == 4
    assert value(s, "gandist_rollbacks_total") == 1
    assert value(s, "gandist_events_total", event="rollback") == 1
    assert value(s, "gandist_events_total", event="diverged") == 1
    assert value(s, "gandist_events_total", event="other") == 1
    assert value(s, "gandist_last_rollback_timestamp_seconds") >= before


def test_checkpoint_saved_resets_checkpoint_age(make_exporter):
    exporter = make_exporter()
    exporter.last_checkpoint_time -= 3600  # pretend the run started an hour ago without a checkpoint
    assert value(scrape(exporter), "gandist_checkpoint_age_seconds") >= 3600
    exporter.checkpoint_saved(step=200, seconds=1.5)
    s = scrape(exporter)
    assert value(s, "gandist_checkpoint_age_seconds") < 5
    assert value(s, "gandist_checkpoint_step") == 200
    assert value(s, "gandist_checkpoint_seconds_sum") == 1.5
    assert value(s, "gandist_checkpoint_seconds_bucket", le="2.5") == 1


def test_endpoint_serves_metrics_over_http_on_port_plus_local_rank(make_exporter):
    base = free_port()
    exporter = make_exporter(run="http", rank=1, local_rank=1, port=base - 1)
    assert exporter.port == base
    exporter.publish(signals(step=42))
    text = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10).read().decode()
    assert value(parse_exposition(text), "gandist_step", run="http", rank="1") == 42
    exporter.close()
    with socket.socket() as sock:  # closed: nobody listens on the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", base))


def test_port_in_use_moves_to_next_free_port_and_logs_it(make_exporter, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="gandist.telemetry.metrics"):
            exporter = make_exporter(port=port, port_search=64)
        assert exporter.port is not None and port < exporter.port < port + 64
        assert f"port {port} is in use" in caplog.text and str(exporter.port) in caplog.text
        exporter.publish(signals(step=3))
        text = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10).read().decode()
        assert value(parse_exposition(text), "gandist_step") == 3


def test_no_free_port_leaves_training_running_without_an_endpoint(make_exporter, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level(logging.WARNING, logger="gandist.telemetry.metrics"):
            exporter = make_exporter(port=taken.getsockname()[1], port_search=1)
    assert exporter.port is None
    assert "serves no metrics" in caplog.text
    exporter.publish(signals(step=9))  # still records
    assert value(scrape(exporter), "gandist_step") == 9


def test_port_zero_serves_nothing_and_two_exporters_keep_separate_registries(make_exporter):
    a = make_exporter(run="a", rank=0)
    b = make_exporter(run="b", rank=1)
    assert a.port is None and b.port is None
    a.publish(signals(step=1))
    b.publish(signals(step=2))
    assert value(scrape(a), "gandist_step") == 1 and value(scrape(b), "gandist_step") == 2
    assert not [k for k in scrape(a) if dict(k[1]).get("run") == "b"]


def test_file_sd_target_names_the_bound_port_and_is_removed_on_close(make_exporter, tmp_path):
    exporter = make_exporter(run="sd", rank=2, port=free_port(), file_sd_dir=str(tmp_path))
    [path] = list(tmp_path.glob("*.json"))
    [group] = json.loads(path.read_text())
    assert group["targets"] == [f"127.0.0.1:{exporter.port}"]
    assert path.name == "gandist-sd-rank2.json"
    exporter.close()
    assert not list(tmp_path.glob("*"))


def test_publish_costs_microseconds(make_exporter):
    exporter = make_exporter(port=free_port())
    sig = signals()
    for i in range(200):  # warm the label caches
        exporter.publish(sig)
    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        sig.step = i
        exporter.publish(sig)
    per_call = (time.perf_counter() - t0) / n
    # ~25 us measured on an idle core; 500 us leaves room for a loaded CI machine and is still < 1% of a 50 ms step
    assert per_call < 500e-6, f"publish took {per_call * 1e6:.0f} us"


def test_a_stuck_scraper_blocks_neither_publish_nor_other_scrapes(make_exporter):
    exporter = make_exporter(port=free_port())
    with socket.create_connection(("127.0.0.1", exporter.port)) as stuck:  # connects, never sends a request
        stuck.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a request: its handler thread waits for the rest
        t0 = time.perf_counter()
        for step in range(100):
            exporter.publish(signals(step=step))
        assert time.perf_counter() - t0 < 1.0
        text = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10).read().decode()
        assert value(parse_exposition(text), "gandist_step") == 99


def test_gpu_memory_is_exported_once_cuda_is_in_use(make_exporter):
    import pytest
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    exporter = make_exporter()
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB
    s = scrape(exporter)
    assert value(s, "gandist_gpu_memory_allocated_bytes", device=str(block.device.index)) >= 64 * 2**20
    assert value(s, "gandist_gpu_memory_reserved_bytes", device=str(block.device.index)) >= 64 * 2**20


def test_no_gpu_series_without_cuda_in_use(make_exporter):
    import torch

    exporter = make_exporter()
    names = {name for name, _ in scrape(exporter)}
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        assert not [n for n in names if n.startswith("gandist_gpu_")]
