"""`gandist eval RUN_DIR` (metrics table + JSON), `gandist eval stats`, `gandist project` (fit a StyleGAN2 w to an image)
and `gandist features digits` (train the built-in feature net)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import fsspec

from gandist.errors import UserError
from gandist.remote_run_dir import is_remote, join


def add_cli(subparsers) -> None:
    """Register the `eval` and `features` subcommands."""
    p = subparsers.add_parser("eval", help="evaluate a run: FID, KID, IS, precision/recall, mode coverage")
    p.add_argument("run_dir", help="run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--metrics", default=None, help="comma-separated: fid,kid,is,pr,modes (default: eval.metrics, else by data kind)")
    p.add_argument("--num", type=int, default=None, help="generated samples (default: eval.num)")
    p.add_argument("--checkpoint", default="latest", help="STEP, best or latest (default: latest)")
    p.add_argument("--features", choices=("digits", "inception"), default=None, help="feature network (default: eval.features)")
    p.add_argument("--features-path", default=None, help="weights path or fsspec URL (inception: pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--reference-stats", default=None, help="FID against this `gandist eval stats` file (default: eval.reference_stats)")
    p.add_argument("--truncation", default=None, metavar="PSI,...",
                   help="truncation curve: the metrics at each psi, e.g. 1.0,0.7,0.5 (JSON + PNG plot)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="override an eval key of the run's config, e.g. --set eval.pr_k=5 (repeatable)")
    p.add_argument("--lpips-path", default=None, help="ppl: lpips v0.1 vgg.pth (default: eval.lpips_path)")
    p.add_argument("--vgg16-path", default=None, help="ppl: torchvision vgg16-397923af.pth (default: eval.vgg16_path)")
    p.add_argument("--no-ema", action="store_true", help="evaluate G instead of its EMA copy")
    p.add_argument("--out", default=None, help="JSON output file (default: RUN_DIR/eval/eval-STEP.json)")
    p.set_defaults(func=run_eval)

    stats = subparsers.add_parser("eval-stats", help="reference statistics of a whole dataset (also `gandist eval stats`)")
    stats.add_argument("data", help="a config YAML (its data and eval sections), an image folder, or `digits`")
    stats.add_argument("--out", default=None, help="statistics .npz (default: the cache, named by the key's hash)")
    stats.add_argument("--resolution", type=int, default=None, help="folder/digits: image size (default: the data's default)")
    stats.add_argument("--channels", type=int, choices=(1, 3), default=None, help="folder/digits: 1 (grey) or 3 (RGB)")
    stats.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set eval.resize=clean (repeatable)")
    stats.add_argument("--features", choices=("digits", "inception"), default=None, help="feature network (default: eval.features)")
    stats.add_argument("--features-path", default=None, help="weights path or fsspec URL of the feature network")
    stats.add_argument("--force", action="store_true", help="overwrite an --out file computed for other settings")
    stats.set_defaults(func=run_stats)

    j = subparsers.add_parser("project", help="fit a StyleGAN2 w (W or W+) and its noise maps to an image")
    j.add_argument("run_dir", help="run directory of a model.arch=stylegan2 run")
    j.add_argument("image", help="PNG/JPEG to project, with G's channel count (resized to G's resolution)")
    j.add_argument("--out", required=True, help="folder for projected_w.npz, projected.png, progress.png, projection.json")
    j.add_argument("--space", choices=("w", "w+"), default="w", help="w: one w for all layers (the paper); w+: one per layer")
    j.add_argument("--steps", type=int, default=1000, help="Adam steps (the paper: 1000)")
    j.add_argument("--distance", choices=("lpips", "digits"), default="lpips",
                   help="lpips (--lpips-path/--vgg16-path or eval.lpips_path/vgg16_path) or digits (offline, tests)")
    j.add_argument("--lpips-path", default=None, help="lpips v0.1 vgg.pth (default: eval.lpips_path)")
    j.add_argument("--vgg16-path", default=None, help="torchvision vgg16-397923af.pth (default: eval.vgg16_path)")
    j.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="override an eval key, e.g. --set eval.vgg16_sha256=HEX for other VGG16 weights (repeatable)")
    j.add_argument("--class", dest="class_id", type=int, default=None, help="class of a conditional G")
    j.add_argument("--checkpoint", default="latest", help="STEP, best or latest (default: latest)")
    j.add_argument("--seed", type=int, default=0, help="seed of the initial noise maps and the noise added to w")
    j.add_argument("--snapshots", type=int, default=8, help="images in the progress strip (besides target and result)")
    j.add_argument("--no-ema", action="store_true", help="project into G instead of its EMA copy")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    j.set_defaults(func=run_project)

    f = subparsers.add_parser("features", help="build a feature network for evaluation")
    f.add_argument("kind", choices=("digits",), help="digits: small CNN trained on scikit-learn's digits")
    f.add_argument("--out", default=None, help="folder for digits_features.pt (default: ~/.cache/gandist or $GANDIST_CACHE)")
    f.add_argument("--seed", type=int, default=0, help="training seed")
    f.add_argument("--epochs", type=int, default=30, help="training epochs")
    f.set_defaults(func=run_features)


def _checkpoint_arg(text: str):
    """'latest' | 'best' | int step."""
    if text in ("latest", "best"):
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--checkpoint {text!r}: give a step number, best or latest") from None


def _check_run_dir(run_dir: Path) -> None:
    """A clear error for a folder that is not a run dir or has no checkpoint yet."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml); give the --run-dir of a `gandist train` run")
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir() or not any(p.name.startswith("step-") for p in ckpts.iterdir()):
        raise UserError(f"{run_dir}: no checkpoints in {ckpts}; train longer (checkpoint.every) or pick another run")


def format_table(result: dict) -> str:
    """Metric table, one `name  value` line each."""
    rows = [(k, v) for k, v in result.items() if not isinstance(v, (dict, list))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows)


def _with_eval_overrides(cfg, args: argparse.Namespace):
    """The run's config with --set eval.* overrides and --lpips-path/--vgg16-path applied (validated again)."""
    from gandist.config import apply_override, config_from_dict, parse_override

    overrides = list(args.overrides)
    overrides += [f"eval.{key}={value}" for key, value in (("lpips_path", args.lpips_path),
                                                           ("vgg16_path", args.vgg16_path)) if value]
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json")
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != "eval":
            raise UserError(f"--set {text}: gandist eval changes only eval.* keys; retrain to change {keys[0]}")
        apply_override(data, keys, value)
    return config_from_dict(data, "--set")


def run_eval(args: argparse.Namespace) -> int:
    """Handler of `gandist eval`."""
    from gandist.api import load_run
    from gandist.eval.periodic import Evaluator

    remote = is_remote(args.run_dir)  # a URL run dir: load_run reads it there, the result is written back there
    run_dir = args.run_dir if remote else Path(args.run_dir)
    if not remote:
        _check_run_dir(run_dir)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    if metrics:
        from gandist.eval.config import METRICS

        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise UserError(f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if args.num is not None and args.num <= 0:
        raise UserError(f"--num {args.num}: give a positive number of samples")
    truncations = None
    if args.truncation is not None:
        from gandist.eval.truncation import parse_truncations

        truncations = parse_truncations(args.truncation)
    run = load_run(str(run_dir), checkpoint=_checkpoint_arg(args.checkpoint))
    run.config = _with_eval_overrides(run.config, args)
    evaluator = Evaluator(run.config, None if remote else str(run_dir), metrics=metrics, num=args.num,
                          features=args.features, features_path=args.features_path,
                          reference_stats=args.reference_stats)
    G = run.G if args.no_ema or getattr(run, "G_ema", None) is None else run.G_ema
    if truncations is not None:
        return _write_curve(args, run, evaluator, G, truncations)
    result = {"step": run.step, "checkpoint": str(args.checkpoint), "net": "G" if G is run.G else "G_ema",
              **evaluator.evaluate(G)}
    text = json.dumps(result, indent=2) + "\n"
    if remote and not args.out:
        out = join(args.run_dir, "eval", f"eval-{run.step:08d}.json")
        with fsspec.open(out, "w") as f:
            f.write(text)
    else:
        out = Path(args.out) if args.out else run_dir / "eval" / f"eval-{run.step:08d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def _stats_config(args: argparse.Namespace):
    """The ExperimentConfig that `gandist eval stats DATA` describes (YAML, image folder or digits)."""
    from gandist.config import load_config

    # a whole config must validate; only its data and eval sections are used, so any image model will do
    image = ["model.arch=dcgan"]
    extra = [f"data.resolution={args.resolution}"] if args.resolution else []
    extra += [f"data.channels={args.channels}"] if args.channels else []
    if args.data.endswith((".yaml", ".yml")):
        return load_config(args.data, [*args.overrides, *extra])
    if args.data == "digits":
        return load_config(None, [*image, "data.kind=digits", *extra, *args.overrides])
    if Path(args.data).is_dir():
        return load_config(None, [*image, "data.kind=folder", f"data.path={args.data}", *extra, *args.overrides])
    raise UserError(f"{args.data}: give a config YAML, an image folder or `digits`")


def run_stats(args: argparse.Namespace) -> int:
    """Handler of `gandist eval stats`: statistics of every image (no flips), written once per key."""
    from gandist.data.sources import build_source
    from gandist.eval.features import load_feature_net
    from gandist.eval.reference_stats import (dataset_stats, default_stats_path, key_digest, key_mismatch,
                                              read_key, save_stats, stats_key, file_sha256)

    cfg = _stats_config(args)
    ecfg = cfg.eval
    features = args.features or ("digits" if ecfg.features == "auto" else ecfg.features)
    net = load_feature_net(features, args.features_path or ecfg.features_path, ecfg.features_sha256, ecfg.resize)
    key = stats_key(cfg.data, net, ecfg.resize)
    out = Path(args.out) if args.out else default_stats_path(key)
    if out.is_file():
        problem = key_mismatch(read_key(out), key)
        if problem is None:
            print(f"{out}: up to date ({key_digest(key)}), sha256 {file_sha256(out)}")
            return 0
        if not args.force:
            raise UserError(f"{out}: exists for other settings ({problem}); pass --force to replace it or another --out")
    stats = dataset_stats(build_source(cfg.data), net, ecfg.batch_size, progress=True)
    sha = save_stats(out, stats, key)
    print(f"wrote {out}: {stats.n} images, {key['features']} features, resize {key['resize']}, sha256 {sha}")
    return 0


def _write_curve(args, run, evaluator, G, truncations: list[float]) -> int:
    """`gandist eval --truncation`: JSON of the metrics per psi and a PNG plot beside it."""
    from gandist.eval.truncation import format_curve, plot_curve, truncation_curve

    rows = truncation_curve(evaluator, G, truncations)
    out = Path(args.out) if args.out else Path(run.run_dir) / "eval" / f"truncation-{run.step:08d}.json"
    png = out.with_suffix(".png")
    net = "G" if G is run.G else "G_ema"
    plotted = plot_curve(rows, png, f"{Path(run.run_dir).name} step {run.step} ({net})")
    result = {"step": run.step, "checkpoint": str(args.checkpoint), "net": net, "plot": str(png),
              "plotted": plotted, "curve": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_curve(rows))
    print(f"wrote {out} and {png}")
    return 0


def _project_config(args: argparse.Namespace, run_dir: Path):
    """The run's config, checked for a StyleGAN2 G and the distance's weight paths before anything is loaded."""
    import yaml

    from gandist.config import config_from_dict

    if args.steps <= 0:
        raise UserError(f"--steps {args.steps}: give a positive number of steps")
    if args.snapshots < 0:
        raise UserError(f"--snapshots {args.snapshots}: give 0 or more")
    _check_run_dir(run_dir)
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()) or {}, str(run_dir / "config.yaml"))
    if cfg.model.arch != "stylegan2":
        raise UserError(f"{run_dir}: model.arch is {cfg.model.arch}; gandist project fits the w of a StyleGAN2 G, "
                        "give the run dir of a model.arch=stylegan2 run")
    cfg = _with_eval_overrides(cfg, args)  # --set eval.*, --lpips-path, --vgg16-path
    if args.distance == "lpips" and not (cfg.eval.lpips_path and cfg.eval.vgg16_path):
        raise UserError("--distance lpips needs the LPIPS-VGG16 weights: pass --lpips-path (lpips v0.1 vgg.pth) and "
                        "--vgg16-path (vgg16-397923af.pth), or set eval.lpips_path / eval.vgg16_path; nothing is "
                        "downloaded (--distance digits works offline on digits runs)")
    return cfg


def run_project(args: argparse.Namespace) -> int:
    """Handler of `gandist project`: the fitted ws and noise maps, the projected image and a progress strip."""
    import numpy as np
    import torch

    from gandist.api import load_run
    from gandist.eval.projector import check_generator, digits_distance, load_target, lpips_distance, project
    from gandist.telemetry.samples import image_grid_png, save_png

    run_dir = Path(args.run_dir)
    cfg = _project_config(args, run_dir)
    run = load_run(str(run_dir), checkpoint=_checkpoint_arg(args.checkpoint))
    G = run.G if args.no_ema or run.G_ema is None else run.G_ema
    check_generator(G, args.class_id)
    target, note = load_target(args.image, run.info.shape[-1], run.info.shape[0])
    if note:
        print(note)
    if args.distance == "lpips":
        from gandist.eval.lpips import load_lpips

        e = cfg.eval
        net = load_lpips(e.lpips_path, e.vgg16_path, e.lpips_sha256, e.vgg16_sha256)
        distance, weights = lpips_distance(net), net.weights_sha256
    else:
        from gandist.eval.features import load_digits_net

        distance, weights = digits_distance(load_digits_net()), {}
    result = project(G, target, distance, steps=args.steps, space=args.space, class_id=args.class_id,
                     snapshots=args.snapshots, seed=args.seed, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    noise = {f"noise/{name}": buf.numpy() for name, buf in result["noise"].items()}
    np.savez(out / "projected_w.npz", ws=result["ws"].numpy(), space=args.space, step=run.step, **noise)
    save_png(str(out / "projected.png"), image_grid_png(result["image"][None], nrow=1))
    strip = torch.stack([target[0], result["start_image"], *(img for _, img in result["progress"])])
    save_png(str(out / "progress.png"), image_grid_png(strip, nrow=len(strip)))
    summary = {"run_dir": str(run_dir), "step": run.step, "net": "G" if G is run.G else "G_ema", "image": args.image,
               "resized": note, "space": args.space, "steps": args.steps, "class": args.class_id, "seed": args.seed,
               "distance": args.distance, "weights_sha256": weights, "start_distance": result["start_distance"],
               "final_distance": result["final_distance"],
               "start_pixel_mse": float((result["start_image"] - target[0]).square().mean()),
               "final_pixel_mse": float((result["image"] - target[0]).square().mean()),
               "progress_steps": [s for s, _ in result["progress"]]}
    (out / "projection.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"projected {args.image} ({args.space}, {args.steps} steps): {args.distance} distance "
          f"{summary['start_distance']:.4g} at w_avg -> {summary['final_distance']:.4g}, pixel MSE "
          f"{summary['start_pixel_mse']:.4g} -> {summary['final_pixel_mse']:.4g}; wrote {out}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    """Handler of `gandist features digits`: train, report held-out accuracy, save the weights."""
    from gandist.eval.features import DIGITS_FILE, default_cache_dir, save_digits_net, train_digits_net

    if args.epochs <= 0:
        raise UserError(f"--epochs {args.epochs}: give a positive number")
    net, accuracy = train_digits_net(seed=args.seed, epochs=args.epochs)
    path = (Path(args.out) if args.out else default_cache_dir()) / DIGITS_FILE
    save_digits_net(net, accuracy, path)
    print(f"digits feature network: held-out accuracy {accuracy:.4f}; wrote {path}")
    return 0
