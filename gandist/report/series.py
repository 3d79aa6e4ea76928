"""Metric records as columns, and decimation that keeps spikes and full resolution around events.

A 1,000,000-step run with log_every 50 has 20,000 records per signal; a browser draws that, but the page would
carry megabytes per trace. The overview keeps, per bucket of records, the first, the minimum and the maximum (so a
one-record spike survives), plus every record within `EVENT_RADIUS` records of a watchdog event.
"""
from __future__ import annotations

import math

import numpy as np

from gandist.report.runlog import number

OVERVIEW_BUCKETS = 1000  # -> at most ~3000 points per trace, plus event windows
EVENT_RADIUS = 100  # records kept at full resolution on each side of a watchdog event
HEATMAP_COLUMNS = 600
NESTED = ("losses", "grad_norm", "sigma", "lr", "seconds")
SCALARS = ("d_real", "d_fake", "img_per_sec", "data_wait", "ema_distance", "ada_p", "images_seen", "nonfinite")


def _column(values: list) -> np.ndarray:
    try:
        return np.array(values, dtype=np.float64)  # also parses the writer's 'nan'/'inf' strings
    except (TypeError, ValueError):
        return np.array([number(v) for v in values], dtype=np.float64)


def columns(records: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(steps, {flat name: float64 array}) with NaN where a record lacks the value."""
    nan = math.nan
    steps = np.array([r["step"] for r in records], dtype=np.int64)
    cols: dict[str, np.ndarray] = {}
    for group in NESTED:  # column by column: one list comprehension per signal, not one call per value
        dicts = [r.get(group) if isinstance(r.get(group), dict) else {} for r in records]
        for key in sorted({k for d in dicts for k in d}):
            cols[f"{group}/{key}"] = _column([d.get(key, nan) for d in dicts])
    for key in SCALARS:
        values = [r.get(key) for r in records]
        if any(v is not None for v in values):
            cols[key] = _column([nan if v is None else v for v in values])
    nested_p = [(r.get("augment") or {}).get("p") if isinstance(r.get("augment"), dict) else None for r in records]
    if "ada_p" not in cols and any(v is not None for v in nested_p):  # ADA's p, should it be logged nested
        cols["ada_p"] = _column([nan if v is None else v for v in nested_p])
    for col in cols.values():
        col[~np.isfinite(col)] = np.nan  # inf cannot be drawn; the diverged records carry the marker instead
    if "d_real" in cols and "d_fake" in cols:
        cols["gap"] = cols["d_real"] - cols["d_fake"]
    return steps, cols


def keep_mask(steps: np.ndarray, event_steps: list[int], radius: int = EVENT_RADIUS) -> np.ndarray:
    """True for records within `radius` records of any event step."""
    mask = np.zeros(len(steps), dtype=bool)
    for step in event_steps:
        i = int(np.searchsorted(steps, step))
        mask[max(0, i - radius):i + radius + 1] = True
    return mask


def decimate(y: np.ndarray, keep: np.ndarray, buckets: int = OVERVIEW_BUCKETS) -> np.ndarray:
    """Indices to draw: everything when short, else first/min/max per bucket plus the kept ones."""
    n = len(y)
    if n <= 3 * buckets:
        return np.arange(n)
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    rows = padded.reshape(buckets, size)
    finite = np.isfinite(rows)
    has = finite.any(axis=1)
    low = np.where(finite, rows, np.inf).argmin(axis=1)
    high = np.where(finite, rows, -np.inf).argmax(axis=1)
    base = np.arange(buckets) * size
    picks = np.concatenate([base, (base + low)[has], (base + high)[has], np.flatnonzero(keep), [n - 1]])
    picks = np.unique(picks)
    return picks[picks < n]


def heatmap(steps: np.ndarray, matrix: np.ndarray, columns_max: int = HEATMAP_COLUMNS):
    """(steps, matrix [layers, columns]) with columns merged by their max (growth is what matters) when too many."""
    n = matrix.shape[1]
    if n <= columns_max:
        return steps, matrix
    size = -(-n // columns_max)
    width = -(-n // size)
    padded = np.full((matrix.shape[0], width * size), np.nan)
    padded[:, :n] = matrix
    with np.errstate(all="ignore"):
        blocks = padded.reshape(matrix.shape[0], width, size)
        finite = np.isfinite(blocks)
        merged = np.where(finite.any(axis=2), np.where(finite, blocks, -np.inf).max(axis=2), np.nan)
    return steps[::size][:width], merged
