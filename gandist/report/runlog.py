"""Reading a run dir for the report: jsonl files read up to their last newline, the surviving timeline, sessions.

A run that is still training appends to metrics.jsonl while we read it, and a crash can leave a line cut in the
middle; both are read consistently: bytes up to the last newline, every full line that parses, and a count of the
rest. After a rollback (or a resume after a crash) the loop replays steps, so the file holds abandoned futures; the
*timeline* keeps, per step, the record that survived.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from gandist.errors import UserError


@dataclass
class JsonlRead:
    """Records of one jsonl file and how many lines could not be used (cut mid-line or not JSON)."""

    records: list[dict]
    skipped: int = 0
    partial_tail: bool = False  # the file did not end with a newline (still being written, or cut by a crash)


def read_jsonl_consistent(path: Path) -> JsonlRead:
    """Every full, parseable line up to the last newline; a missing file reads as empty."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JsonlRead([])
    end = data.rfind(b"\n") + 1  # a writer mid-line: its bytes after the last newline are not a record yet
    records, skipped = [], 0
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            skipped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped += 1
    partial = bool(data[end:].strip())
    return JsonlRead(records, skipped + int(partial), partial)


def number(value) -> float:
    """A logged value as float: the writer stores non-finite floats as 'nan'/'inf' strings; junk -> NaN."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def split_timeline(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(timeline, abandoned): a record at or before an earlier one's step replaces it; diverged steps are abandoned."""
    timeline: list[dict] = []
    abandoned: list[dict] = []
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        if record.get("verdict") == "diverged":  # rolled back (or the run gave up there): never part of the run
            abandoned.append(record)
            continue
        while timeline and timeline[-1]["step"] >= step:
            abandoned.append(timeline.pop())
        timeline.append(record)
    return timeline, abandoned


@dataclass
class RunData:
    """Everything the report shows, read once."""

    run_dir: Path
    config: dict
    records: list[dict]  # metrics.jsonl in file order
    timeline: list[dict]  # the surviving record per step, ascending
    abandoned: list[dict]
    events: list[dict]
    evals: list[dict]
    samples: list[tuple[int, Path]]  # (step, png), ascending
    best_checkpoint: str | None
    warnings: list[str] = field(default_factory=list)

    def events_of(self, *kinds: str) -> list[dict]:
        """Events whose kind is one of `kinds`, in file order."""
        return [e for e in self.events if e.get("event") in kinds]


def read_config(run_dir: Path) -> dict:
    """RUN_DIR/config.yaml as a dict ({} when missing)."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); restore it or delete it") from None
    return loaded if isinstance(loaded, dict) else {}


def _samples(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    folder = run_dir / "samples"
    if folder.is_dir():
        for path in folder.glob("step-*.png"):
            try:
                out.append((int(path.stem.split("-", 1)[1]), path))
            except ValueError:
                continue
    return sorted(out)


def _best(run_dir: Path, config: dict) -> str | None:
    url = ((config.get("checkpoint") or {}).get("url")) or str(run_dir / "checkpoints")
    pointer = Path(url) / "best" if "://" not in url else None
    try:
        return pointer.read_text().strip() if pointer is not None else None
    except OSError:
        return None


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read a run dir; UserError when it is no run dir or holds no metrics yet."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such run directory (give the --run-dir of a `gandist train` run)")
    metrics_path = root / "metrics.jsonl"
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path}: no metrics in this run dir (give the --run-dir of a training: "
                        "`gandist train` writes metrics.jsonl every telemetry.log_every steps)")
    metrics = read_jsonl_consistent(metrics_path)
    if not metrics.records:
        raise UserError(f"{metrics_path}: no complete metrics record yet (the run logs every telemetry.log_every "
                        "steps; wait for the first one)")
    events = read_jsonl_consistent(root / "events.jsonl")
    evals = read_jsonl_consistent(root / "eval" / "metrics.jsonl")
    warnings = []
    for name, read in (("metrics.jsonl", metrics), ("events.jsonl", events), ("eval/metrics.jsonl", evals)):
        if read.skipped:
            warnings.append(f"{name}: skipped {read.skipped} line(s) cut mid-line or not JSON "
                            f"(used {len(read.records)} full line(s))")
    config = read_config(root)
    timeline, abandoned = split_timeline(metrics.records)
    return RunData(root, config, metrics.records, timeline, abandoned, events.records, evals.records,
                   _samples(root), _best(root, config), warnings)
