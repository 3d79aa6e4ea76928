"""`gandist dashboard`: write the Grafana dashboard JSON, or regenerate every committed monitoring file."""
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
