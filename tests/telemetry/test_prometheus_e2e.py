"""End to end with real parts: a real Prometheus scrapes a real 2-rank DDP `gandist train` run (torchrun, gloo),
then every PromQL expression of the dashboard and of the alert rules runs against Prometheus' HTTP API, and every
rank's live /metrics passes `promtool check metrics`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from promkit import assert_promtool_clean, free_port

from gandist.telemetry import dashboard
from gandist.telemetry.metrics import file_sd_target

ROOT = Path(__file__).resolve().parents[2]
RATE_WINDOW = "20s"  # stands in for Grafana's $__rate_interval (>= 4 scrapes at 1 s)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="prometheus not found: install Debian's prometheus package (.ci/run does)"),
    pytest.mark.skipif(not (ROOT / "gandist" / "strategies" / "ddp.py").is_file(),
                       reason="gandist/strategies/ddp.py (the DDP strategy) is not in this checkout yet"),
]


def two_free_ports() -> int:
    """A port P with P and P + 1 free (ranks 0 and 1 serve on telemetry.port + local rank)."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def query(prom: str, expr: str) -> dict:
    """GET /api/v1/query; returns the decoded JSON (errors come back as JSON too)."""
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:  # 400: bad expression; the body names the parse error
        return json.load(err)


def grafana_to_promql(expr: str) -> str:
    """Replace the dashboard's variables as Grafana would with 'All' selected."""
    for name in ("job", "run", "rank"):
        expr = expr.replace(f"${name}", ".*")
    return expr.replace("$__rate_interval", RATE_WINDOW)


def wait_for(predicate, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: process exited with {proc.returncode} first")
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def prometheus(tmp_path):
    """A real Prometheus on 127.0.0.1 (scrape interval 1 s) discovering ranks through file_sd, with gandist's rules."""
    sd_dir = tmp_path / "targets"
    sd_dir.mkdir()
    shutil.copy(ROOT / "monitoring" / "gandist-rules.yml", tmp_path / "gandist-rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["gandist-rules.yml"],
        "scrape_configs": [{"job_name": "gandist", "file_sd_configs": [
            {"files": [str(sd_dir / "*.json")], "refresh_interval": "1s"}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(ready, 60, "Prometheus to be ready", [proc])
        yield url, sd_dir
    finally:
        stop(proc)
        log.close()


def test_dashboard_and_alert_queries_run_against_prometheus_scraping_a_2_rank_ddp_run(prometheus, promtool, tmp_path):
    prom, sd_dir = prometheus
    metrics_port = two_free_ports()
    # Prometheus' discovery hands new targets to its scrapers at most every 5 s, so targets that appear when the
    # ranks start may first be scraped after a fast machine has passed the injected fault. Register the two
    # targets first, as the ranks will write them (they overwrite the files with the same content), and start
    # training once Prometheus is trying to scrape them: the first scrape then follows each server's start.
    for rank in (0, 1):
        name, text = file_sd_target("e2e-prom", rank, "127.0.0.1", metrics_port + rank)
        (sd_dir / name).write_text(text)

    def targets_known() -> bool:
        active = json.load(urllib.request.urlopen(f"{prom}/api/v1/targets", timeout=10))["data"]["activeTargets"]
        return len(active) == 2
    wait_for(targets_known, 60, "Prometheus to discover the two pre-registered targets")
    # A config file, not --set: the watchdog injects a NaN at step 400 so that a real rollback reaches Prometheus
    # after it has scraped the counters at 0 (late enough for a fast machine, early enough for a slow one).
    config = yaml.safe_load((ROOT / "configs" / "toy_ring8_tiny.yaml").read_text())
    config.update(name="e2e-prom", penalties=[{"kind": "r1", "weight": 1.0, "every": 2}])
    config["train"]["steps"] = 100000  # stopped by the test once everything was checked
    config["checkpoint"] = {"every": 25, "keep_last": 2}
    config["distributed"] = {"strategy": "ddp", "backend": "gloo"}
    config["watchdog"] = {"healthy_window": 5, "inject": {"kind": "nan", "step": 400}}
    config["telemetry"] = {"progress": False, "port": metrics_port, "file_sd_dir": str(sd_dir), "log_every": 10,
                           "sample_every": 0}
    (tmp_path / "e2e.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(free_port()),
        "-m", "gandist", "train", str(tmp_path / "e2e.yaml"), "--run-dir", str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "train.log", "w")
    train = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def count(expr: str) -> float:
            answer = query(prom, expr)
            assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
            result = answer["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0

        def scraped() -> bool:  # both ranks scraped 8+ times, and 3+ scrapes of each since its rollback
            return (count('count(count_over_time(gandist_step{run="e2e-prom"}[1m]) >= 8)') == 2
                    and count('count(min_over_time(gandist_rollbacks_total{run="e2e-prom"}[3s]) >= 1)') == 2)
        try:
            wait_for(scraped, 300, "8 scrapes of both ranks and a rollback", [train])
        except AssertionError:
            log.flush()
            print((tmp_path / "train.log").read_text()[-4000:])
            raise

        ranks = query(prom, 'gandist_step{job="gandist", run="e2e-prom"}')["data"]["result"]
        assert sorted(r["metric"]["rank"] for r in ranks) == ["0", "1"]
        ports = sorted(int(r["metric"]["instance"].rsplit(":", 1)[1]) for r in ranks)
        assert ports == [metrics_port, metrics_port + 1]  # telemetry.port + local rank
        # Prometheus' own linter on what each rank serves mid-run (after its rollback: every series exists)
        assert_promtool_clean(promtool, [f"http://127.0.0.1:{port}/metrics" for port in ports])

        empty, failed = [], []
        for title, expr, needs_cuda in dashboard.dashboard_queries():
            answer = query(prom, grafana_to_promql(expr))
            if answer.get("status") != "success":
                failed.append(f"{title}: {expr}: {answer.get('error')}")
            # no CUDA here: GPU memory has no series; ADA's gauges exist only in runs with augment.ada, which
            # needs images (this run trains on 2-D points)
            elif not answer["data"]["result"] and not needs_cuda and not title.startswith("ADA"):
                empty.append(f"{title}: {expr}")
        assert not failed, "dashboard queries Prometheus rejects:\n" + "\n".join(failed)
        assert not empty, "dashboard queries without a series:\n" + "\n".join(empty)

        for rule in dashboard.alert_rules():
            answer = query(prom, rule["expr"])
            assert answer.get("status") == "success", f"{rule['alert']}: {answer.get('error')}"
        groups = json.load(urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=10))["data"]["groups"]
        loaded = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        assert loaded == {r["alert"]: "ok" for r in dashboard.alert_rules()}

        def rollback_alert_firing() -> bool:
            alerts = json.load(urllib.request.urlopen(f"{prom}/api/v1/alerts", timeout=10))["data"]["alerts"]
            return {a["labels"]["rank"] for a in alerts
                    if a["labels"]["alertname"] == "GandistRollback" and a["state"] == "firing"} == {"0", "1"}
        assert count('count(min_over_time(gandist_rollbacks_total{run="e2e-prom"}[10m]) == 0)') == 2  # saw 0 first
        wait_for(rollback_alert_firing, 30, "the GandistRollback alert to fire for both ranks", [train])
        events = query(prom, 'sum(gandist_events_total{run="e2e-prom", event="rollback"})')["data"]["result"]
        assert float(events[0]["value"][1]) == 2  # one rollback event on each rank

        # DDP ranks step in lockstep (at most one step apart at any instant). Prometheus scrapes the two ranks at
        # different moments, so compare each sample of one rank with the other rank's samples just before and after
        # it: the step must lie between them (give or take the lockstep step and the scrape's own latency).
        steps_per_second = count(f'max(rate(gandist_step{{run="e2e-prom"}}[{RATE_WINDOW}]))')
        assert steps_per_second > 0
        slack = 2 + 0.25 * steps_per_second  # a scrape reads the value up to a fraction of a second after its stamp

        def step_history() -> dict[str, list[tuple[float, float]]]:  # per rank, the samples since the rollback
            result = query(prom, 'gandist_step{run="e2e-prom"}[1m]')["data"]["result"]
            series = {r["metric"]["rank"]: [(float(t), float(v)) for t, v in r["values"]] for r in result}
            drops = [b[0] for samples in series.values() for a, b in zip(samples, samples[1:]) if b[1] < a[1]]
            cut = max(drops, default=0.0)
            return {rank: [x for x in samples if x[0] > cut] for rank, samples in series.items()}
        wait_for(lambda: min(map(len, step_history().values())) >= 10, 60, "10 scrapes of each rank after the rollback",
                 [train])
        history = step_history()
        compared, outside = lockstep_check(history["0"], history["1"], slack)
        compared_back, outside_back = lockstep_check(history["1"], history["0"], slack)
        assert compared + compared_back >= 10, history
        assert not outside + outside_back, (outside + outside_back, slack)
        images_per_second = count(f'max(rate(gandist_images_seen_total{{run="e2e-prom"}}[{RATE_WINDOW}]))')
        # every rank counts the 64-image global batch per G step (d_steps=1)
        assert images_per_second == pytest.approx(64 * steps_per_second, rel=0.5)
    finally:
        stop(train)
        log.close()


def lockstep_check(mine: list[tuple[float, float]], other: list[tuple[float, float]], slack: float):
    """(number of samples compared, samples outside) for `mine` against the bracketing samples of `other`.

    A sample at time t is compared with the other rank's last sample at or before t and first at or after t."""
    compared, outside = 0, []
    for t, step in mine:
        before = [s for s in other if s[0] <= t]
        after = [s for s in other if s[0] >= t]
        if not before or not after:
            continue
        compared += 1
        if not before[-1][1] - slack <= step <= after[0][1] + slack:
            outside.append((t, step, before[-1], after[0]))
    return compared, outside


# in the "ray" group (tests/conftest.py): it starts a local Ray of its own, and two Ray clusters at once on a 2-core
# machine starve each other's workers
@pytest.mark.xdist_group("ray")
@pytest.mark.skipif(not (ROOT / "gandist" / "orchestrate" / "ray_train.py").is_file(),
                    reason="gandist/orchestrate/ray_train.py (gandist train --ray) is not in this checkout yet")
def test_prometheus_scrapes_each_ray_train_worker_on_port_plus_local_rank(prometheus, promtool, tmp_path):
    prom, sd_dir = prometheus
    metrics_port = two_free_ports()
    cmd = [
        sys.executable, "-m", "gandist", "train", str(ROOT / "configs" / "toy_ring8_tiny.yaml"), "--ray",
        "--workers", "2", "--run-dir", str(tmp_path / "run"), "--set", "name=e2e-ray",
        "--set", "distributed.strategy=ddp", "--set", "train.steps=100000", "--set", "telemetry.progress=false",
        "--set", f"telemetry.port={metrics_port}", "--set", f"telemetry.file_sd_dir={sd_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(tmp_path / "ray.log", "w")
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def both_workers_scraped() -> bool:
            answer = query(prom, 'count(count_over_time(gandist_step{run="e2e-ray"}[1m]) >= 3)')
            result = answer.get("data", {}).get("result", [])
            return bool(result) and float(result[0]["value"][1]) == 2
        try:
            wait_for(both_workers_scraped, 300, "Prometheus to scrape both Ray Train workers 3 times", [driver])
        except AssertionError:
            log.flush()
            print((tmp_path / "ray.log").read_text()[-4000:])
            raise
        series = query(prom, 'gandist_step{run="e2e-ray"}')["data"]["result"]
        assert sorted(r["metric"]["rank"] for r in series) == ["0", "1"]
        ports = sorted(int(r["metric"]["instance"].rsplit(":", 1)[1]) for r in series)
        assert ports == [metrics_port, metrics_port + 1]  # Ray Train sets LOCAL_RANK; each worker serves its own
        assert all(float(r["value"][1]) > 0 for r in series)  # both are training
        assert_promtool_clean(promtool, [f"http://127.0.0.1:{port}/metrics" for port in ports])
    finally:
        stop(driver, signal.SIGINT, grace=60)  # SIGINT: Ray Train aborts the run and the driver stops local Ray
        log.close()
