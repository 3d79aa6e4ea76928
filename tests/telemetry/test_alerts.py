"""Alert rules: promtool accepts them, and promtool unit tests show each alert firing on the series it watches."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from gandist.telemetry import dashboard

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules_passes(promtool):
    result = run([promtool, "check", "rules", "gandist-rules.yml"], MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(dashboard.alert_rules())} rules found" in result.stdout


def test_example_prometheus_config_is_valid(promtool):
    result = run([promtool, "check", "config", "--syntax-only", "prometheus.yml"], MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_the_promtool_unit_tests(promtool):
    result = run([promtool, "test", "rules", "gandist-rules.test.yml"], MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((MONITORING / "gandist-rules.test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    names = {r["alert"] for r in dashboard.alert_rules()}
    assert fired == names  # each alert is shown firing...
    assert len(quiet) >= len(names) - 1  # ...and (all but one) shown quiet on healthy data too


def test_promtool_unit_tests_fail_when_a_rule_stops_firing(promtool, tmp_path):
    # the unit tests must be able to fail: raise the checkpoint-age threshold past the test series and expect red
    shutil.copy(MONITORING / "gandist-rules.test.yml", tmp_path)
    rules = (MONITORING / "gandist-rules.yml").read_text()
    old = f"gandist_checkpoint_age_seconds > {dashboard.CHECKPOINT_MAX_AGE_SECONDS}"
    assert old in rules
    (tmp_path / "gandist-rules.yml").write_text(rules.replace(old, "gandist_checkpoint_age_seconds > 999999"))
    result = run([promtool, "test", "rules", "gandist-rules.test.yml"], tmp_path)
    assert result.returncode != 0
    assert "GandistCheckpointTooOld" in result.stdout + result.stderr
