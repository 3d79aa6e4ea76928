"""Core CLI commands: `gandist train` and `gandist generate`."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from gandist.errors import UserError


def add_core_commands(sub) -> None:
    """Register train and generate on the top-level parser."""
    p = sub.add_parser("train", help="train a GAN (resumes when the run dir holds a checkpoint)")
    p.add_argument("config", help="YAML config, e.g. configs/demo_digits.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.batch_size=64 (repeatable)")
    p.add_argument("--run-dir", help="run directory (default runs/<name>)")
    p.add_argument("--force", action="store_true", help="continue a run dir whose config differs")
    p.add_argument("--takeover", action="store_true",
                   help="take the run dir's lease from the process holding it (stop that one first)")
    p.add_argument("--ray", action="store_true", help="run the workers with Ray Train")
    p.add_argument("--address", help="Ray cluster address (with --ray; default: local)")
    p.add_argument("--workers", default="1",
                   help="Ray Train workers (with --ray): N, or MIN:MAX for an elastic group that follows the cluster")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (with --ray)")
    p.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="write a sample grid (or toy2d scatter) from a run's EMA generator")
    g.add_argument("run_dir")
    g.add_argument("--num", type=int, default=64, help="number of samples")
    g.add_argument("--out", required=True, help="output PNG")
    g.add_argument("--seed", type=int, default=0, help="noise seed (same seed and checkpoint: same bytes)")
    g.add_argument("--truncation", type=float, default=1.0, help="truncation psi (1: none)")
    g.add_argument("--truncation-cutoff", type=int, default=None, metavar="K",
                   help="StyleGAN2: truncate only the first K ws (coarse styles), as stylegan2-ada")
    g.add_argument("--standing-stats", type=int, default=0, metavar="N",
                   help="BigGAN-PyTorch's standing statistics: re-estimate G's BN statistics from N forward passes")
    g.add_argument("--class", dest="class_id", type=int, default=None, help="class to generate (conditional G)")
    g.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("checkpoint", help="checkpoint maintenance")
    csub = c.add_subparsers(dest="checkpoint_command", required=True)
    conv = csub.add_parser("convert", help="rewrite checkpoints of an older gandist (format 1) in the safe format")
    conv.add_argument("run_dir", help="run dir (its config.yaml names checkpoint.url) or a checkpoints URL")
    conv.add_argument("--trusted", action="store_true",
                      help="you vouch for these files: reading them once unpickles them, which can run code")
    conv.set_defaults(func=cmd_checkpoint_convert)


def setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", stream=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from gandist.config import load_config

    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or os.path.join("runs", cfg.name)
    setup_logging()
    if args.ray:
        from gandist.orchestrate.ray_train import train_with_ray

        return train_with_ray(cfg, run_dir, address=args.address, workers=args.workers,
                              gpus_per_worker=args.gpus_per_worker, force=args.force, takeover=args.takeover)
    from gandist.train.loop import run_training

    # WatchdogGaveUp: cli.main prints it, exit 3
    summary = run_training(cfg, run_dir, force=args.force, takeover=args.takeover)
    if os.environ.get("RANK", "0") == "0":
        print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """The end-of-run table (telemetry's formatter when present)."""
    try:
        from gandist.telemetry.summary import format_summary as fmt
    except ImportError:
        fmt = None
    if fmt is not None:
        return fmt(summary)
    rows = [(k, v) for k, v in summary.items() if k != "last_losses"]
    rows += [(f"loss {k}", f"{v:.4f}") for k, v in summary.get("last_losses", {}).items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_generate(args: argparse.Namespace) -> int:
    from gandist.api import load_run
    from gandist.telemetry.samples import save_png
    from gandist.train.sampling import render, sample, standing_stats

    if args.num < 1:
        raise UserError(f"--num {args.num}: give at least 1 sample")
    if args.standing_stats < 0:
        raise UserError(f"--standing-stats {args.standing_stats}: give a number of forward passes (0: off)")
    run = load_run(args.run_dir, args.checkpoint)
    try:
        if args.standing_stats:
            standing_stats(run.sampler, args.standing_stats, args.seed, args.truncation)
        x, _ = sample(run.sampler, args.num, args.seed, args.truncation, args.class_id,
                      truncation_cutoff=args.truncation_cutoff)
    except ValueError as err:
        raise UserError(str(err)) from None
    save_png(args.out, render(x, run.config, f"step {run.step}"))
    print(f"wrote {args.out} ({args.num} samples, step {run.step}, {os.path.basename(run.checkpoint)})")
    return 0


def cmd_checkpoint_convert(args: argparse.Namespace) -> int:
    from gandist.checkpoint import convert_old_checkpoints

    if not args.trusted:
        raise UserError("gandist checkpoint convert reads old checkpoints with weights_only=False, which runs any "
                        "code a tampered file holds; pass --trusted if these files are your own")
    url = args.run_dir
    cfg_path = os.path.join(args.run_dir, "config.yaml")
    if os.path.isfile(cfg_path):
        import yaml

        from gandist.config import config_from_dict

        cfg = config_from_dict(yaml.safe_load(open(cfg_path)) or {}, cfg_path)
        url = cfg.checkpoint.url or os.path.join(args.run_dir, "checkpoints")
    converted = convert_old_checkpoints(url)
    print(f"converted {len(converted)} checkpoint(s) under {url}: {', '.join(converted) or 'none needed it'}")
    return 0
