"""The table printed when a run ends: what was done, how fast, whether the watchdog had to act, where the losses ended."""
from __future__ import annotations

import math


def _duration(seconds: float) -> str:
    """1234.5 -> '20m 34.5s' (hours shown when over an hour)."""
    if not math.isfinite(seconds) or seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m {secs:04.1f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h {int(minutes):02d}m {secs:04.1f}s"


def _number(value) -> str:
    """Losses: 4 significant digits, scientific when tiny or huge; non-numbers as given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def format_summary(summary: dict) -> str:
    """A two-column table of a finished run: steps, wall time, img/s, rollbacks, last losses, run dir."""
    rows = [
        ("steps", _number(int(summary.get("steps", 0)))),
        ("wall time", _duration(float(summary.get("wall_seconds", 0.0)))),
        ("img/s", f"{float(summary.get('img_per_sec', 0.0)):,.1f}"),
        ("rollbacks", _number(int(summary.get("rollbacks", 0)))),
    ]
    for name, value in sorted((summary.get("last_losses") or {}).items()):
        rows.append((f"loss {name}", _number(value)))
    if summary.get("run_dir"):
        rows.append(("run dir", str(summary["run_dir"])))
    width = max(len(key) for key, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = "-" * (width + value_width + 3)
    lines = ["run summary", rule] + [f"{key:<{width}}   {value}" for key, value in rows] + [rule]
    lines += [f"rollback {i}: {text}" for i, text in enumerate(rollback_stories(summary), 1)]
    return "\n".join(lines)


def rollback_stories(summary: dict) -> list[str]:
    """This session's rollbacks in words (the last `rollbacks` rollback events of RUN_DIR/events.jsonl)."""
    count, run_dir = int(summary.get("rollbacks", 0) or 0), summary.get("run_dir")
    if not count or not run_dir:
        return []
    from pathlib import Path

    from gandist.report.explain import explain_rollback
    from gandist.report.runlog import read_config, read_jsonl_consistent

    events = [e for e in read_jsonl_consistent(Path(run_dir) / "events.jsonl").records if e.get("event") == "rollback"]
    cfg = read_config(Path(run_dir))
    return [explain_rollback(e, cfg) for e in events[-count:]]
