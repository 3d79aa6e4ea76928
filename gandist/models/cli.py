"""`gandist info CONFIG [--set k=v ...] [--json]`: what a config builds, before any training."""
from __future__ import annotations

import argparse


def add_cli(subparsers) -> None:
    """Register the `info` subcommand."""
    p = subparsers.add_parser("info", help="print each net's parameters (per block), resolution and FLOPs per image")
    p.add_argument("config", help="experiment YAML, e.g. configs/biggan_128.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set model.ch=64")
    p.add_argument("--json", action="store_true", help='print {"G": {"params": N, ...}, "D": {...}} as JSON')
    p.set_defaults(func=info_command)


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def format_info(info: dict) -> str:
    """A human-readable table of model_info's dict."""
    lines = [f"data: shape {tuple(info['data']['shape'])}, {info['data']['num_classes']} classes"]
    for net in ("G", "D"):
        d = info[net]
        gflops = "-" if d["flops_per_image"] is None else f"{d['flops_per_image'] / 1e9:.2f}"
        lines.append(f"{net}: {_fmt(d['params'])} parameters, {d['resolution']} px, {gflops} GFLOPs per image (forward)")
        for block, n in d["blocks"].items():
            lines.append(f"  {block:<40} {_fmt(n):>14}")
    return "\n".join(lines)


def info_command(args: argparse.Namespace) -> int:
    """Handler of `gandist info`."""
    import json

    from gandist.errors import UserError
    from gandist.config import load_config
    from gandist.models.info import model_info

    cfg = load_config(args.config, args.overrides)
    try:
        info = model_info(cfg)
    except ValueError as err:  # builders raise ValueError for config/data mismatches
        raise UserError(f"{args.config}: {err}") from None
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
