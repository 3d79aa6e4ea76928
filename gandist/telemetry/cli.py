"""`gandist dashboard` (Grafana JSON, committed monitoring files) and `gandist report` (an HTML page of a run)."""
from __future__ import annotations

import sys
from pathlib import Path


def add_cli(subparsers) -> None:
    """Register `gandist dashboard`."""
    parser = subparsers.add_parser(
        "dashboard",
        help="write the Grafana dashboard JSON (and, with --write-manifests, the alert rules and k8s monitoring files)",
    )
    parser.add_argument("--out", help="dashboard JSON file to write (default: print to stdout)")
    parser.add_argument(
        "--write-manifests", metavar="ROOT",
        help="regenerate k8s/monitoring/* and monitoring/gandist-rules.yml under the repo root ROOT",
    )
    parser.set_defaults(func=run_dashboard)
    add_report_cli(subparsers)


def add_report_cli(subparsers) -> None:
    """Register `gandist report` (its code lives in gandist/report/)."""
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML page of a run's signals that explains every watchdog rollback")
    parser.add_argument("run_dir", help="the run dir of a `gandist train` run (finished or still training)")
    parser.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")
    parser.add_argument("--png", metavar="DIR", help="also write every plot as DIR/<panel>.png (matplotlib)")
    parser.add_argument("--watch", type=float, metavar="SECONDS",
                        help="regenerate the page every SECONDS while the run trains (the page reloads itself); "
                             "Ctrl-C stops")
    parser.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from gandist.report.build import run_report

    return run_report(args)


def run_dashboard(args) -> int:
    """Handler of `gandist dashboard`."""
    from gandist.errors import UserError
    from gandist.telemetry import dashboard

    if args.write_manifests:
        root = Path(args.write_manifests)
        if not root.is_dir():
            raise UserError(f"--write-manifests {root}: not a directory (give the repo root, e.g. --write-manifests .)")
        for rel, text in dashboard.generated_files().items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    text = dashboard.dashboard_json()
    if args.out:
        out = Path(args.out)
        if out.parent and not out.parent.is_dir():
            raise UserError(f"--out {out}: directory {out.parent} does not exist (create it or pick another path)")
        out.write_text(text)
        print(f"wrote {out} ({len(dashboard.panel_specs())} panels)")
    elif not args.write_manifests:
        sys.stdout.write(text)
    return 0
