"""Fine-tuning benchmark: the demo run fine-tuned on a 10% subset of digits, against training from scratch.

    .venv/bin/python tools/bench/finetune.py --out bench_finetune.json
    .venv/bin/python tools/bench/finetune.py --source-steps 200 --steps 60 --num 500   # ~10 min on 2 cores

1. The source: configs/demo_digits.yaml trained for --source-steps (or --source RUN_DIR, e.g. a full demo run).
2. The target: a stratified 10% of scikit-learn's digits (18 per class, 180 images) written as a class-folder of
   16 px PNGs (data.kind=folder), so that every run below sees the same few images.
3. Three runs of --steps on the target with the demo's settings: from scratch; train.init_from=SOURCE (weights
   only: fresh Adam, step 0); and train.init_from plus model.freeze_d (D's first blocks frozen, FreezeD).
Each final EMA generator gets FID (digits features) through `gandist eval RUN --metrics fid` against the 180 target
images, and against all 1797 digits (the target is a sample of that distribution: a 180-image reference is noisy).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

COMMON = ["telemetry.progress=false", "telemetry.sample_every=0", "telemetry.log_every=50"]


def gandist(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "gandist", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"gandist {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def train(run_dir: Path, overrides: list[str]) -> float:
    t0 = time.time()
    sets = [a for kv in COMMON + overrides for a in ("--set", kv)]
    gandist("train", "configs/demo_digits.yaml", *sets, "--run-dir", str(run_dir), "--force")
    return time.time() - t0


def write_subset(folder: Path, per_class: int, seed: int) -> int:
    """per_class digits of each class (a seeded draw) as 16 px grey PNGs in folder/<class>/."""
    import numpy as np
    import torch
    from PIL import Image

    from gandist.data.sources import load_digits_tensor

    x, y = load_digits_tensor(16)
    gen = torch.Generator().manual_seed(seed)
    n = 0
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        for i in idx[torch.randperm(len(idx), generator=gen)[:per_class]].tolist():
            (folder / str(c)).mkdir(parents=True, exist_ok=True)
            pixels = ((x[i, 0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / str(c) / f"{i:04d}.png")
            n += 1
    return n


def fid(run_dir: Path, num: int, data: list[str] | None = None) -> float:
    out = run_dir / "eval" / f"bench-{'all' if data else 'target'}.json"
    if data:  # evaluate the same checkpoint against another reference: a copy of the run dir's config
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        cfg["data"] = {"kind": "digits", "resolution": 16}
        ref_dir = run_dir.parent / f"{run_dir.name}-vs-all"
        ref_dir.mkdir(exist_ok=True)
        (ref_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
        ckpts = ref_dir / "checkpoints"
        if not ckpts.exists():
            ckpts.symlink_to(run_dir / "checkpoints")
        run_dir = ref_dir
    gandist("eval", str(run_dir), "--metrics", "fid", "--num", str(num), "--out", str(out))
    return round(json.loads(out.read_text())["fid"], 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/gandist-bench-finetune", help="folder for the runs and the subset")
    ap.add_argument("--source", default=None, help="an existing demo run dir to fine-tune from")
    ap.add_argument("--source-steps", type=int, default=200, help="steps of the demo run trained when no --source")
    ap.add_argument("--steps", type=int, default=60, help="steps of each run on the 10% subset")
    ap.add_argument("--freeze-d", type=int, default=2, help="model.freeze_d of the FreezeD run")
    ap.add_argument("--num", type=int, default=500, help="generated samples per FID")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"steps": args.steps, "freeze_d": args.freeze_d, "num": args.num}
    source = Path(args.source) if args.source else work / "source"
    if not args.source:
        results["source_seconds"] = round(train(source, [f"train.steps={args.source_steps}",
                                                         f"checkpoint.every={args.source_steps}"]), 1)
        results["source_steps"] = args.source_steps
    subset = work / "digits10"
    results["target_images"] = write_subset(subset, per_class=18, seed=0)
    target = [f"data={{kind: folder, path: {subset}, resolution: 16, channels: 1}}", f"train.steps={args.steps}",
              f"checkpoint.every={args.steps}", "train.ema.start_step=0"]
    runs = {"scratch": [], "init_from": [f"train.init_from={source}"],
            "init_from+freeze_d": [f"train.init_from={source}", f"model.freeze_d={args.freeze_d}"]}
    for name, extra in runs.items():
        run_dir = work / name
        seconds = train(run_dir, target + extra)
        results[name] = {"seconds": round(seconds, 1), "fid_target": fid(run_dir, args.num),
                         "fid_all_digits": fid(run_dir, args.num, data=["digits"])}
        print(name, results[name], flush=True)
    results["source_fid_all_digits"] = fid(source, args.num)  # the source's own data: all digits
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
