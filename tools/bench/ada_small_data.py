"""ADA on small data: the demo DCGAN on the first 200 digits, with and without augment.ada; FID over time against
all 1797 digits (digits features) and ADA's r_t / p from metrics.jsonl.

    .venv/bin/python tools/bench/ada_small_data.py [--steps 300] [--every 100] [--out /tmp/ada_bench]

Both runs train in parallel (one process each); checkpoints every --every steps are evaluated afterwards with the
full data set as the reference, so the FID measures how well G learned digits, not how well it copied the 200.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gandist.api import load_run  # noqa: E402
from gandist.config import load_config  # noqa: E402
from gandist.eval.periodic import Evaluator  # noqa: E402

ADA = "{target: 0.6, interval: 4, kimg: 4}"  # p can go 0 -> 1 in 125 steps of 32: the runs are short


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--out", default="/tmp/ada_bench")
    args = ap.parse_args()
    common = ["train.batch_size=32", "model.ch=16", "data.limit=200", f"train.steps={args.steps}",
              f"checkpoint.every={args.every}", f"checkpoint.keep_last={args.steps // args.every + 1}",
              "telemetry.progress=false", "telemetry.sample_every=0", "telemetry.log_every=25",
              # a D that can overfit 200 images within a few minutes of CPU: no spectral norm, a faster lr
              "model.spectral_norm=false", "optim.d.lr=1e-3"]
    # the baseline keeps p = 0 (the pipeline is then the identity) but measures r_t with the same controller
    runs = {"no-ada": ["augment.ada={p: 0, target: null, interval: 4}"], "ada": [f"augment.ada={ADA}"]}
    procs = {}
    for name, extra in runs.items():
        sets = [a for o in common + extra for a in ("--set", o)]
        procs[name] = subprocess.Popen([sys.executable, "-m", "gandist", "train", "configs/demo_digits.yaml", *sets,
                                        "--run-dir", os.path.join(args.out, name), "--force"], cwd=ROOT,
                                       stdout=subprocess.DEVNULL)
    for name, proc in procs.items():
        if proc.wait():
            raise SystemExit(f"{name}: training failed")
    full = load_config(str(ROOT / "configs/demo_digits.yaml"), common + ["data.limit=0", "eval.num=1797"])
    evaluator = Evaluator(full, metrics=["fid"], features="digits")
    for name in runs:
        run_dir = os.path.join(args.out, name)
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        for step in range(args.every, args.steps + 1, args.every):
            fid = evaluator.evaluate(load_run(run_dir, step).sampler)["fid"]
            near = ([r for r in rows if r["step"] <= step] or rows)[-1]
            rt = near["ada_rt"] if near.get("ada_rt") is not None else float("nan")
            p = near["ada_p"] if near.get("ada_p") is not None else float("nan")
            print(f"{name:7s} step {step:5d}  FID(all digits) {fid:7.2f}  d_real {near['d_real']:+.2f}  "
                  f"r_t {rt:+.2f}  p {p:.3f}", flush=True)


if __name__ == "__main__":
    main()
