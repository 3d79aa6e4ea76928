"""The end-of-run summary table."""
from __future__ import annotations

from gandist.telemetry.summary import format_summary


def test_summary_table_shows_steps_time_throughput_rollbacks_and_losses():
    text = format_summary({"steps": 1200, "wall_seconds": 3725.5, "img_per_sec": 1234.56, "rollbacks": 2,
                           "last_losses": {"G": 0.693147, "D": 1.386294, "D/r1": 0.00012345}, "run_dir": "runs/x"})
    rows = {line[:12].strip(): line[12:].strip() for line in text.splitlines()[2:-1]}
    assert rows["steps"] == "1,200"
    assert rows["rollbacks"] == "2"
    assert rows["loss D/r1"] == "0.0001234"
    assert "wall time   1h 02m 05.5s" in text
    assert "img/s       1,234.6" in text
    assert "loss G" in text and "0.6931" in text and "1.386" in text and "0.0001234" in text
    assert "run dir     runs/x" in text
    lines = text.splitlines()
    assert lines[0] == "run summary" and set(lines[1]) == {"-"} and lines[1] == lines[-1]


def test_summary_handles_a_run_that_did_no_step():
    text = format_summary({"steps": 0, "wall_seconds": 0.25, "img_per_sec": 0.0, "rollbacks": 0, "last_losses": {},
                           "run_dir": ""})
    assert "steps       0" in text and "wall time   0.2s" in text and "loss" not in text
