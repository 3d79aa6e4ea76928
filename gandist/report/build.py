"""Build and write the report; `--watch` regenerates it every N seconds until Ctrl-C."""
from __future__ import annotations

import importlib.util
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gandist.errors import UserError
from gandist.fileio import atomic_write_text
from gandist.remote_run_dir import fetch_run_files, is_remote, run_name
from gandist.report import facts, page, panels, pngs
from gandist.report.runlog import RunData, load_run


@dataclass
class Report:
    """A built report: the page, the panels it drew and what was read."""

    html: str
    panels: list[panels.Panel]
    run: RunData
    seconds: float


def _gave_up_stories(run: RunData) -> list[str]:
    return [f"The watchdog gave up at step {e.get('step')}:\n{e.get('report', '')}" for e in run.events_of("gave_up")]


def build_report(run_dir: str, refresh: int | None = None) -> Report:
    """Read `run_dir` and build the page (refresh: seconds for the page to reload itself, for --watch)."""
    t0 = time.perf_counter()
    if importlib.util.find_spec("plotly") is None:
        raise UserError("gandist report needs plotly, one of gandist's dependencies: pip install 'plotly>=6'")
    run = load_run(run_dir)
    overview = panels.OverviewBuilder(run).build()
    rollbacks = panels.rollback_panels(run)
    title = f"gandist report: {run.config.get('name', Path(run_dir).name)}"
    text = page.render_html(title, facts.header_facts(run), run.warnings, overview, rollbacks, run.samples,
                            _gave_up_stories(run), refresh)
    return Report(text, overview + rollbacks, run, time.perf_counter() - t0)


def default_target(run_dir: str) -> Path:
    """RUN_DIR/report.html; for a URL run dir, report-NAME.html in the current folder."""
    if is_remote(run_dir):
        return Path.cwd() / f"report-{run_name(run_dir)}.html"
    return Path(run_dir) / "report.html"


def write_report(run_dir: str, out: str | None = None, png_dir: str | None = None,
                 refresh: int | None = None) -> Report:
    """Build and write RUN_DIR/report.html (or `out`) atomically, and the PNGs when png_dir is given."""
    target = Path(out) if out else default_target(run_dir)
    if not target.parent.is_dir():
        raise UserError(f"--out {target}: directory {target.parent} does not exist (create it or pick another path)")
    if is_remote(run_dir):  # a run dir on S3 or another URL: read a fresh local copy of its logs and samples
        with tempfile.TemporaryDirectory(prefix="gandist-report-") as copy:
            fetch_run_files(run_dir, copy)
            report = build_report(copy, refresh)
    else:
        report = build_report(run_dir, refresh)
    atomic_write_text(target, report.html)  # a browser reloading mid-write sees the old page or the new one
    if png_dir:
        pngs.write_pngs(report.panels, png_dir)
    return report


def _say(report: Report, target: str, png_dir: str | None) -> None:
    for warning in report.run.warnings:
        print(f"warning: {warning}")
    extra = f", {len(report.panels)} PNGs in {png_dir}" if png_dir else ""
    print(f"wrote {target} ({len(report.html) / 1e6:.1f} MB, {len(report.panels)} panels, "
          f"{len(report.run.events_of('rollback'))} rollback(s), {report.seconds:.1f}s{extra})")


def run_report(args) -> int:
    """Handler of `gandist report`."""
    target = args.out or str(default_target(args.run_dir))
    if args.watch is None:
        _say(write_report(args.run_dir, args.out, args.png), target, args.png)
        return 0
    if args.watch <= 0:
        raise UserError(f"--watch {args.watch}: give the seconds between regenerations, e.g. --watch 30")
    print(f"regenerating {target} every {args.watch:g}s; Ctrl-C stops")
    try:
        while True:
            try:
                _say(write_report(args.run_dir, args.out, args.png, refresh=max(1, round(args.watch))), target,
                     args.png)
            except UserError as err:  # a run that has not logged yet: keep waiting for it
                print(f"waiting: {err}")
            time.sleep(args.watch)
    except KeyboardInterrupt:
        print("stopped watching")
        return 0
