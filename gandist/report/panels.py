"""What the report shows, as plain data: panels of lines, a heatmap, bounds and event markers.

Both renderers (plotly for the HTML page, matplotlib for `--png`) draw these same specs, so the page and the PNGs
never disagree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gandist.report import series
from gandist.report.explain import explain_rollback, parse_trip
from gandist.report.runlog import RunData, split_timeline


@dataclass
class Line:
    """One trace: x (steps) and y, drawn in subplot `row` (1-based)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    row: int = 1
    markers: bool = False


@dataclass
class Heat:
    """A heatmap: z [len(labels), len(x)] in subplot `row`."""

    x: np.ndarray
    labels: list[str]
    z: np.ndarray
    colorbar: str
    row: int = 1


@dataclass
class Marker:
    """A vertical line at step x across the whole panel (kind: rollback, diverged, checkpoint, gave_up, resumed)."""

    x: float
    label: str
    kind: str


@dataclass
class Panel:
    """One figure: subplots (one y title per row), traces, horizontal bounds (row, y, label) and markers."""

    id: str
    title: str
    rows: list[str]
    lines: list[Line] = field(default_factory=list)
    heat: Heat | None = None
    log_rows: set[int] = field(default_factory=set)
    bounds: list[tuple[int, float, str]] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    note: str = ""

    def has_data(self) -> bool:
        """True when some trace has a finite value."""
        return (self.heat is not None and np.isfinite(self.heat.z).any()) or any(
            np.isfinite(line.y).any() for line in self.lines)


# eval/metrics.jsonl keys that are settings or bookkeeping, not results
EVAL_CONSTANTS = ("step", "time", "num", "samples", "modes_total", "seconds")


def watchdog_markers(run: RunData) -> list[Marker]:
    """Every watchdog event (and every resume) as a vertical line on the time axis."""
    out = []
    rollbacks = run.events_of("rollback")
    rolled = {e.get("diverged_step") for e in rollbacks}
    for i, event in enumerate(rollbacks, 1):
        out.append(Marker(event.get("diverged_step", event.get("step", 0)), f"rollback {i}", "rollback"))
        out.append(Marker(event.get("checkpoint_step", 0), f"restored {event.get('checkpoint_step')}", "checkpoint"))
    for event in run.events_of("diverged"):
        if event.get("step") not in rolled:  # a divergence that ended the run (gave up, or no healthy checkpoint)
            out.append(Marker(event.get("step", 0), "diverged", "diverged"))
    for event in run.events_of("gave_up"):
        out.append(Marker(event.get("step", 0), "gave up", "gave_up"))
    for event in run.events_of("start"):
        if event.get("resumed_from") is not None:
            out.append(Marker(event.get("step", 0), "resumed", "resumed"))
    return out


def _names(cols: dict, prefix: str) -> list[str]:
    return sorted(n for n in cols if n.startswith(prefix))


class OverviewBuilder:
    """The run-wide panels from the timeline, decimated, with the watchdog events marked."""

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.steps, self.cols = series.columns(run.timeline) if run.timeline else (np.zeros(0, np.int64), {})
        self.markers = watchdog_markers(run)
        self.keep = series.keep_mask(self.steps, [m.x for m in self.markers])

    def line(self, name: str, label: str | None = None, row: int = 1) -> Line:
        """A decimated trace of column `name`."""
        y = self.cols[name]
        idx = series.decimate(y, self.keep)
        if label is None:  # 'losses/D' -> 'D'; 'seconds/D' -> 'D phase' (not to be read as net D's value)
            label = name.split("/", 1)[-1] + (" phase" if name.startswith("seconds/") else "")
        return Line(label, self.steps[idx], y[idx], row)

    def panel(self, id: str, title: str, rows: list[str], names: list[list[str]], log_rows=(), **kw) -> Panel:
        """A panel with one row per list of column names (missing columns skipped)."""
        lines = [self.line(n, row=r) for r, group in enumerate(names, 1) for n in group if n in self.cols]
        return Panel(id, title, rows, lines, log_rows=set(log_rows), markers=self.markers, **kw)

    def build(self) -> list[Panel]:
        """Every overview panel that has data."""
        c = self.cols
        losses = [n for n in _names(c, "losses/") if n.count("/") == 1]
        regs = [n for n in _names(c, "losses/") if n.count("/") == 2]
        phases = _names(c, "seconds/")
        panels = [
            self.panel("losses", "D and G losses, and each regularizer", ["loss", "regularizer"][:1 + bool(regs)],
                       [losses, regs], log_rows=[2] if regs else []),
            self.panel("logits", "D(real), D(fake) and their gap (mean logits)", ["logit"],
                       [["d_real", "d_fake", "gap"]]),
            self.panel("grad_norm", "Gradient norm per net (before clipping)", ["norm"], [_names(c, "grad_norm/")],
                       log_rows=[1]),
            self.sigma_panel(),
            self.panel("lr", "Learning rates", ["lr"], [_names(c, "lr/")]),
            self.panel("throughput", "Throughput: img/s, data wait and seconds per phase", ["img/s", "seconds"],
                       [["img_per_sec"], ["data_wait"] + phases]),
            self.panel("ema", "EMA distance ||EMA(G) - G|| / ||G||", ["distance"], [["ema_distance"]]),
            self.panel("ada", "ADA augmentation probability p", ["p"], [["ada_p"]]),
            self.eval_panel(),
        ]
        return [p for p in panels if p is not None and p.has_data()]

    def sigma_panel(self) -> Panel | None:
        """Top singular value of every layer over steps (log10), the BigGAN-paper view."""
        names = _names(self.cols, "sigma/")
        if not names:
            return None
        matrix = np.vstack([self.cols[n] for n in names])
        with np.errstate(all="ignore"):
            matrix = np.log10(np.where(matrix > 0, matrix, np.nan))
        x, z = series.heatmap(self.steps, matrix)
        heat = Heat(x, [n[len("sigma/"):] for n in names], z, "log10 sigma")
        return Panel("sigma", "Top singular value of every layer (log10), over steps", ["layer"], heat=heat,
                     markers=self.markers)

    def eval_panel(self) -> Panel | None:
        """Evaluation metrics over steps, one row per metric (their scales differ)."""
        evals = sorted((e for e in self.run.evals if isinstance(e.get("step"), int)), key=lambda e: e["step"])
        if not evals:
            return None
        keys = sorted({k for e in evals for k, v in e.items()
                       if k not in EVAL_CONSTANTS and isinstance(v, (int, float)) and not isinstance(v, bool)})
        x = np.array([e["step"] for e in evals])
        lines = [Line(k, x, np.array([float(e.get(k, math.nan)) for e in evals]), r, markers=True)
                 for r, k in enumerate(keys, 1)]
        return Panel("eval", "Evaluation metrics over steps", keys, lines, markers=self.markers)


def _column(signal: str) -> str:
    """The detector's flat name (detectors.flatten) -> the report's column name."""
    return "losses/" + signal[5:] if signal.startswith("loss/") else signal


def _attempt(run: RunData, event: dict) -> list[dict]:
    """The records of the attempt that diverged: those written before the rollback, as that attempt saw them."""
    when = event.get("time", math.inf)
    diverged = event.get("diverged_step")
    before = [r for r in run.records if r.get("time", 0) <= when and r.get("verdict") != "diverged"]
    timeline, _ = split_timeline(before)
    last = [r for r in run.abandoned if r.get("step") == diverged and r.get("verdict") == "diverged"]
    return timeline + last[:1]


def rollback_panel(run: RunData, index: int, event: dict) -> Panel:
    """The tripped signal in the window before the rollback, its bound, the restored checkpoint, and the story."""
    trip = parse_trip(event, run.config)
    diverged = int(event.get("diverged_step") or event.get("step") or 0)
    restored = int(event.get("checkpoint_step") or 0)
    log_every = int((run.config.get("telemetry") or {}).get("log_every") or 1)
    low = max(0, restored - 3 * max(diverged - restored, 5 * log_every))
    records = [r for r in _attempt(run, event) if low <= r["step"] <= diverged]
    steps, cols = series.columns(records) if records else (np.zeros(0, np.int64), {})
    name = _column(trip.signal) if _column(trip.signal) in cols else "nonfinite"
    panel = Panel(f"rollback-{index}", f"Rollback {index}: step {diverged} -> checkpoint {restored}",
                  [trip.signal or "signal", "losses"], note=explain_rollback(event, run.config))
    if name in cols:
        panel.lines.append(Line(trip.signal or name, steps, cols[name], 1, markers=True))
    if math.isfinite(trip.value):  # the value the detector judged (also when the record could not hold it)
        panel.lines.append(Line("tripped value", np.array([diverged]), np.array([trip.value]), 1, markers=True))
    if math.isfinite(trip.bound):
        panel.bounds.append((1, trip.bound, f"bound {trip.bound:.4g}"))
    if trip.median is not None and math.isfinite(trip.median):
        panel.bounds.append((1, trip.median, f"running median {trip.median:.4g}"))
    for loss in (n for n in sorted(cols) if n.startswith("losses/") and n.count("/") == 1):
        panel.lines.append(Line(loss[7:], steps, cols[loss], 2, markers=True))
    for row in (1, 2):  # a diverged value is often 10^4 x the healthy ones: a log axis shows both
        ys = np.concatenate([line.y for line in panel.lines if line.row == row] +
                            [np.array([b for r, b, _ in panel.bounds if r == row])])
        ys = ys[np.isfinite(ys) & (ys > 0)]  # a zero loss is dropped from a log axis, not a reason against it
        if len(ys) and ys.max() / ys.min() > 100:
            panel.log_rows.add(row)
    panel.markers = [Marker(restored, f"checkpoint {restored}", "checkpoint"), Marker(diverged, "diverged", "rollback")]
    return panel


def rollback_panels(run: RunData) -> list[Panel]:
    """One panel per rollback, in order."""
    return [rollback_panel(run, i, e) for i, e in enumerate(run.events_of("rollback"), 1)]
