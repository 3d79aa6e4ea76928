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
    return "\n".join(lines)
