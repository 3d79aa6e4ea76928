"""`gandist report` on a real run with an injected lr spike, opened in a real headless Chromium; bad run dirs.

The browser test drives Debian's chromium through its own chromedriver (packages chromium, chromium-driver; .ci/run
installs them) with Selenium, pointed at both paths so that Selenium Manager never downloads anything. It is skipped,
with the reason, when either is missing. GANDIST_REPORT_SCREENSHOT_DIR=docs keeps the screenshots (docs/ shows them).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gandist.errors import UserError
from gandist.report.build import build_report, write_report
from gandist.report.explain import explain_rollback, parse_trip
from gandist.report.runlog import load_run, read_jsonl_consistent, split_timeline

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900"]
SPIKE_AT, STEPS = 110, 130  # ring8's D loss passes the 1e4 bound ~5 steps after a x100 lr spike


def gandist(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gandist", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def spike_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A real ring8 run whose lr is spiked x100 at step 110: it diverges, rolls back to step 100 and finishes.

    Mode coverage is evaluated every 50 steps (the eval panel and the best checkpoint in the header)."""
    run_dir = tmp_path_factory.mktemp("report") / "spike"
    out = gandist("train", "configs/toy_ring8_tiny.yaml", "--run-dir", str(run_dir),
                  "--set", f"train.steps={STEPS}", "--set", "watchdog.inject.kind=lr_spike",
                  "--set", f"watchdog.inject.step={SPIKE_AT}", "--set", "telemetry.log_every=5",
                  "--set", "telemetry.sample_every=40", "--set", "telemetry.progress=false",
                  "--set", "eval.every=50", "--set", "eval.num=500")
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out


def _rollback(run_dir: Path) -> dict:
    events = read_jsonl_consistent(run_dir / "events.jsonl").records
    rollbacks = [e for e in events if e.get("event") == "rollback"]
    assert len(rollbacks) == 1, events
    return rollbacks[0]


# -- the explanation, in the terminal and in the summary ----------------------------------------------------------
def test_rollback_is_explained_in_the_terminal_and_the_summary(spike_run):
    run_dir, out = spike_run
    event = _rollback(run_dir)
    trip = parse_trip(event)
    # the spike blows up D's or G's loss past watchdog.bounds.loss (1e4), depending on the step it hits
    assert trip.detector == "bounds" and trip.signal in ("loss/D", "loss/G")
    value = event["signals"][trip.signal]
    assert trip.value == pytest.approx(value, rel=1e-3) and trip.bound == 1e4
    text = explain_rollback(event)
    ratio = abs(value) / 1e4
    assert f"At step {event['diverged_step']} the bounds detector found {trip.signal} = " in text
    assert f"{ratio:.3g} times its bound 1e+04" in text
    assert f"checkpoint of step {event['checkpoint_step']}" in text and event["checkpoint_step"] == 100
    assert "halved both learning rates" in text and "new latent-noise stream" in text
    assert f"watchdog: {text}" in out.stderr  # logged when the watchdog acted
    assert f"rollback 1: {text}" in out.stdout  # and in the run summary


# -- the page in a real browser -----------------------------------------------------------------------------------
def _driver(profile: Path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"no browser: {CHROMIUM} / {CHROMEDRIVER} missing (apt-get install -y chromium chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed (pip install -e .[test])")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


PLOT_STATE_JS = """
var out = {};
document.querySelectorAll('.js-plotly-plot').forEach(function (gd) {
  var points = 0;
  (gd._fullData || []).forEach(function (t) {
    var vals = t.z ? Array.prototype.concat.apply([], Array.from(t.z, function (r) { return Array.from(r); }))
                   : Array.from(t.y || []);
    points += vals.filter(function (v) { return v !== null && isFinite(v); }).length;
  });
  out[gd.id] = {traces: (gd._fullData || []).length, points: points,
                drawn: gd.querySelectorAll('path.js-line, path.point, .hm image, .heatmaplayer image').length};
});
return {plots: out, panels: window.GANDIST_PANELS,
        resources: performance.getEntriesByType('resource').map(function (e) { return e.name; }),
        thumbs: document.querySelectorAll('img.thumb').length,
        facts: document.getElementById('facts').textContent,
        big: (document.getElementById('sample-big') || {}).naturalWidth || 0,
        stories: Array.from(document.querySelectorAll('.story')).map(function (e) { return e.textContent; })};
"""


def _wait_rendered(driver, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while True:
        state = driver.execute_script(PLOT_STATE_JS)
        plots = state["plots"]
        if state["panels"] and len(plots) == len(state["panels"]) and all(p["drawn"] for p in plots.values()):
            return state
        if time.time() > deadline:
            raise AssertionError(f"plots did not render within {timeout}s: {state['plots']}")
        time.sleep(0.5)


def test_report_renders_every_panel_in_chromium(spike_run, tmp_path):
    run_dir, _ = spike_run
    page = tmp_path / "report.html"
    write_report(str(run_dir), str(page), png_dir=str(tmp_path / "png"))
    driver = _driver(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        state = _wait_rendered(driver)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(height + 300, 9000))  # + the browser frame: the whole page in view
        time.sleep(1)  # responsive plots redraw at the new size
        shot = tmp_path / "report_lr_spike.png"
        driver.save_screenshot(str(shot))
        rollback = driver.find_element("id", "rollback-1")
        driver.execute_script("arguments[0].scrollIntoView()", rollback)
        rollback.screenshot(str(tmp_path / "report_lr_spike_rollback.png"))
    finally:
        driver.quit()
    assert errors == []
    expected = {"losses", "logits", "grad_norm", "sigma", "lr", "throughput", "ema", "eval", "rollback-1"}
    assert expected <= set(state["panels"])
    for panel in state["panels"]:
        plot = state["plots"][f"plot-{panel}"]
        assert plot["traces"] >= 1 and plot["points"] >= 2 and plot["drawn"] >= 1, (panel, plot)
    assert state["plots"]["plot-sigma"]["points"] >= 6 * (STEPS // 5 - 2)  # 6 layers x most logged steps
    assert [r for r in state["resources"] if not r.startswith("data:")] == []  # nothing fetched: offline
    assert state["thumbs"] == len(list((run_dir / "samples").glob("step-*.png"))) >= 3 and state["big"] > 0
    assert any(explain_rollback(_rollback(run_dir), load_run(run_dir).config) in s for s in state["stories"])
    best = (run_dir / "checkpoints" / "best").read_text().strip()
    assert f"best checkpoint{best} (" in state["facts"] and f"steps{STEPS} of {STEPS} (finished)" in state["facts"]
    assert state["plots"]["plot-eval"]["points"] >= 2 * 3  # >= 2 evaluations x (modes, high_quality, reverse_kl)
    assert shot.stat().st_size > 50_000
    assert sorted(p.stem for p in (tmp_path / "png").glob("*.png")) == sorted(state["panels"])
    keep = os.environ.get("GANDIST_REPORT_SCREENSHOT_DIR")
    if keep:
        for name in ("report_lr_spike.png", "report_lr_spike_rollback.png"):
            shutil.copy(tmp_path / name, Path(keep) / name)


# -- reading: timeline, torn and growing files, bad run dirs ------------------------------------------------------
def test_timeline_keeps_the_replayed_records_and_drops_the_abandoned_future():
    recs = [{"step": s} for s in (10, 20, 30)] + [{"step": 35, "verdict": "diverged"}] + \
        [{"step": s, "replay": True} for s in (30, 40)]
    timeline, abandoned = split_timeline(recs)
    assert [(r["step"], r.get("replay", False)) for r in timeline] == [(10, False), (20, False), (30, True),
                                                                       (40, True)]
    assert sorted(r["step"] for r in abandoned) == [30, 35]


def test_metrics_cut_mid_line_uses_every_full_line_and_says_how_many_were_skipped(spike_run, tmp_path):
    run_dir = tmp_path / "torn"
    shutil.copytree(spike_run[0], run_dir)
    lines = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    full = len(lines)
    # a crash cut line 5 in the middle and the resumed run appended after it; the file now ends mid-line too
    torn = lines[:4] + [lines[4][:40]] + lines[5:] + [lines[-1][:30]]
    (run_dir / "metrics.jsonl").write_bytes(b"".join(torn))
    run = load_run(run_dir)
    assert len(run.records) == full - 2  # line 5 merged with 6 into one bad line; the tail is not a line yet
    assert run.warnings == [f"metrics.jsonl: skipped 2 line(s) cut mid-line or not JSON (used {full - 2} full "
                            "line(s))"]
    out = gandist("report", str(run_dir), "--png", str(tmp_path / "png"))
    assert out.returncode == 0 and "warning: metrics.jsonl: skipped 2 line(s)" in out.stdout
    pngs = {p.stem: p.read_bytes() for p in (tmp_path / "png").glob("*.png")}
    assert {"losses", "sigma", "rollback-1"} <= set(pngs)
    assert all(data.startswith(b"\x89PNG") and len(data) > 10_000 for data in pngs.values())


def test_run_still_being_written_is_read_up_to_its_last_newline(spike_run, tmp_path):
    path = tmp_path / "metrics.jsonl"
    data = (spike_run[0] / "metrics.jsonl").read_bytes()
    path.write_bytes(data + data.splitlines(keepends=True)[-1][:17])  # a writer caught mid-line
    read = read_jsonl_consistent(path)
    assert read.partial_tail and read.skipped == 1 and len(read.records) == len(data.splitlines())
    with open(path, "ab") as f:  # the writer finishes its line: now it counts
        f.write(data.splitlines(keepends=True)[-1][17:])
    assert len(read_jsonl_consistent(path).records) == len(data.splitlines()) + 1


def test_run_dir_without_metrics_is_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    out = gandist("report", str(tmp_path / "empty"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"{tmp_path / 'empty' / 'metrics.jsonl'}: no metrics in this run dir" in out.stderr
    with pytest.raises(UserError, match="no such run directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "los')
    with pytest.raises(UserError, match="no complete metrics record yet"):
        load_run(tmp_path / "empty")


def test_watch_regenerates_the_page_until_interrupted(spike_run, tmp_path):
    run_dir = tmp_path / "live"
    shutil.copytree(spike_run[0], run_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "gandist", "report", str(run_dir), "--watch", "1"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    page = run_dir / "report.html"
    try:
        _wait_for(lambda: page.exists(), 120)
        assert '<meta http-equiv="refresh" content="1">' in page.read_text()
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        with open(run_dir / "metrics.jsonl", "a") as f:  # the run trains on
            f.write(json.dumps({**last, "step": 999_999, "images_seen": 123_456_789}) + "\n")
        _wait_for(lambda: "123,456,789" in page.read_text(), 120)
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped watching" in stdout


def _wait_for(condition, timeout: float) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.3)


# -- a long run ---------------------------------------------------------------------------------------------------
def test_million_step_run_renders_in_seconds_under_10_mb(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "tools" / "bench" / "report.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run_dir = bench.write_synthetic_run(tmp_path / "run", steps=1_000_000, log_every=50, rollbacks=3)
    t0 = time.process_time()
    report = build_report(str(run_dir))
    cpu = time.process_time() - t0
    assert len(report.run.records) > 20_000 and len(report.run.events_of("rollback")) == 3
    assert len(report.html) < 10e6 and cpu < 30, (len(report.html), cpu)
    losses = next(p for p in report.panels if p.id == "losses")
    d_loss = next(line for line in losses.lines if line.name == "D")
    assert len(d_loss.x) < 6_000  # decimated overview
    for event in report.run.events_of("rollback"):  # ... at full resolution around each rollback
        near = d_loss.x[(d_loss.x > event["checkpoint_step"] - 2_000) & (d_loss.x <= event["checkpoint_step"] + 2_000)]
        assert len(near) == 80
    assert [p.id for p in report.panels if p.id.startswith("rollback-")] == ["rollback-1", "rollback-2", "rollback-3"]


# -- every detector's reason, parsed back (the detectors' own messages, so a rewording fails here) ----------------
def _finding(detector, sequence: list[dict]):
    found = None
    for step, values in enumerate(sequence):
        found = detector.check(step, values) or found
    assert found is not None
    return found


def _event(finding, diverged=400, restored=350, **mitigation) -> dict:
    return {"event": "rollback", "reason": finding.reason, "signals": {**finding.details, "step": diverged},
            "diverged_step": diverged, "checkpoint_step": restored,
            "mitigation": {"lr_scale": 0.5, "skip_batches": 0, "reseed": False, "r1_scale": 1.0, **mitigation}}


def test_every_detector_reason_is_explained_with_its_bound():
    import numpy as np

    from gandist.watchdog import detectors as det
    from gandist.watchdog.config import WatchdogConfig

    cfg = WatchdogConfig()
    config = {"watchdog": cfg.model_dump()}
    rng = np.random.default_rng(0)
    healthy = [{"loss/D": 1.0 + 0.05 * rng.standard_normal()} for _ in range(100)]
    spike = _finding(det.SpikeDetector(cfg.spike), healthy + [{"loss/D": 50.0}])
    trip = parse_trip(_event(spike), config)
    z = spike.details["loss/D:robust_z"]
    median = spike.details["loss/D:median"]
    assert (trip.detector, trip.signal, trip.value) == ("spike", "loss/D", 50.0)
    # the bound in loss units: where k = 10 robust std from the median lies
    assert trip.bound == pytest.approx(median + (50.0 - median) * 10 / z, rel=1e-3) and median < trip.bound < 50
    assert f"{z:.4g} robust std from its running median" in explain_rollback(_event(spike), config)
    assert "(the bound is 10 robust std)" in explain_rollback(_event(spike), config)

    sigma = _finding(det.SigmaGrowthDetector(cfg.sigma_growth),
                     [{"sigma/D/conv1": 1.0 + 0.05 * s} for s in range(0, 120, 2)])
    text = explain_rollback(_event(sigma), config)
    assert parse_trip(_event(sigma), config).signal == "sigma/D/conv1"
    assert "D/conv1" in text and "(the bound is 4x)" in text and "grew " in text

    over = _finding(det.DOverpowerDetector(cfg.d_overpower), [{"gap": 25.0}] * 50)
    trip = parse_trip(_event(over), config)
    assert (trip.detector, trip.value, trip.bound) == ("d_overpower", 25.0, 20.0)
    assert "above its bound 20 for 50 consecutive steps" in explain_rollback(_event(over), config)

    nan = _finding(det.NonfiniteDetector(cfg.nonfinite), [{"loss/D": float("nan"), "nonfinite": 3.0}])
    text = explain_rollback(_event(nan, skip_batches=4, reseed=True, r1_scale=2.0, lr_scale=0.25))
    assert "non-finite detector found non-finite (NaN/Inf) in loss/D, nonfinite" in text
    assert ("scaled both learning rates x0.25 (cumulative), skipped the next 4 data batch(es), switched to a new "
            "latent-noise stream and scaled the R1 penalty weight x2 (cumulative)") in text

    neutral = _event(nan, lr_scale=1.0)
    neutral["reason"] = "diverged on another rank"
    assert explain_rollback(neutral).endswith("changed nothing (watchdog.mitigation is neutral).")
    assert "saw: diverged on another rank" in explain_rollback(neutral)
