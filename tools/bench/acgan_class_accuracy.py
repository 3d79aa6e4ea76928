"""ACGAN vs projection D on digits: the share of generated samples the digits classifier assigns to the class G
was asked for (docs/models.md). Trains one run per d_conditioning from configs/demo_digits.yaml, then classifies
`--per-class` EMA samples of every class with gandist's digits feature net (gandist/eval/features.py).

    python tools/bench/acgan_class_accuracy.py --steps 600 --out /tmp/acgan
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import gandist
from gandist.config import load_config
from gandist.eval.features import load_digits_net
from gandist.train.loop import run_training


def class_accuracy(run_dir: str, per_class: int, seed: int = 0) -> float:
    """Share of per_class samples per class that the digits net classifies as the requested class (EMA G)."""
    run = gandist.load_run(run_dir)
    G = (run.G_ema if run.G_ema is not None else run.G).eval()
    net = load_digits_net()
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(G.num_classes).repeat_interleave(per_class)
    z = torch.randn(len(y), G.z_dim, generator=gen)
    with torch.no_grad():
        _, logits = net(G(z, y))
    return float((logits.argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--out", default="/tmp/acgan")
    args = ap.parse_args()
    rows = {}
    for mode in ("projection", "auxiliary"):
        run_dir = os.path.join(args.out, mode)
        cfg = load_config("configs/demo_digits.yaml", [f"model.d_conditioning={mode}", f"train.steps={args.steps}",
                                                       f"loss.aux_weight={args.aux_weight}", "telemetry.progress=false",
                                                       "telemetry.sample_every=0", f"checkpoint.every={args.steps}"])
        summary = run_training(cfg, run_dir, force=True)
        rows[mode] = {"class_accuracy": round(class_accuracy(run_dir, args.per_class), 4),
                      "wall_seconds": summary["wall_seconds"]}
        print(mode, rows[mode], flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
