"""Mode-coverage benchmark: ring8, grid25 and stacked digits, with the stabilization preset on and off.

    .venv/bin/python tools/bench/modes.py                      # all three, both settings
    .venv/bin/python tools/bench/modes.py --only ring8 --steps 2000 --out bench_modes.json
    .venv/bin/python tools/bench/modes.py --only ring8 --no-off --seed 1 --seed 2  # the spread over seeds
    .venv/bin/python tools/bench/modes.py --only ring8 --no-off --set optim.unrolled_steps=5 --label k5

"on" trains the config as written (configs/<name>.yaml: R1 + PacGAN + EMA for the toys; hinge + SN + R1 + EMA for
stacked digits). "off" is the plain GAN of the same nets: no penalties, no packing, no EMA, no spectral norm.
Each run keeps the config's periodic evaluation, restricted to the cheap mode-coverage metric (the trajectory is in
RUN_DIR/eval/metrics.jsonl), ends with a fresh evaluation of its final generator (eval.num samples) and prints a
side-by-side table with the watchdog's rollbacks per run (the watchdog is on, as in every shipped config; a healthy
run shows 0).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BENCHES = {
    "ring8": {"config": "configs/ring8.yaml", "target": "8/8 modes, >= 95% high quality"},
    "grid25": {"config": "configs/grid25.yaml", "target": "25/25 modes, >= 90% high quality"},
    "stacked_digits": {"config": "configs/stacked_digits.yaml", "target": ">= 990/1000 modes"},
}

STABILIZATION_OFF = ["penalties=[]", "augment.pack=1", "train.ema.enabled=false", "model.spectral_norm=false"]


def run_one(name: str, stabilized: bool, out_dir: Path, steps: int | None, seed: int | None = None,
            extra: list[str] | None = None, label: str | None = None) -> dict:
    """Train one benchmark config (stabilization on or off, plus `extra` overrides) and evaluate its final G."""
    from gandist.api import load_run
    from gandist.config import load_config
    from gandist.eval.periodic import Evaluator
    from gandist.train.loop import run_training

    overrides = ["telemetry.progress=false", "eval.metrics=[modes]"] + ([] if stabilized else STABILIZATION_OFF)
    if steps:
        overrides.append(f"train.steps={steps}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    overrides += extra or []
    cfg = load_config(ROOT / BENCHES[name]["config"], overrides)
    stab = label or ("on" if stabilized else "off")
    run_dir = out_dir / (f"{name}-{stab}" + ("" if seed is None else f"-seed{seed}"))
    if run_dir.exists():  # a fresh run every time: a leftover checkpoint would be resumed and time nothing
        shutil.rmtree(run_dir)
    start = time.time()
    run_training(cfg, str(run_dir), force=True)
    train_seconds = time.time() - start
    run = load_run(str(run_dir))
    G = run.G_ema if run.G_ema is not None else run.G
    metrics = Evaluator(run.config, str(run_dir), metrics=["modes"]).evaluate(G)
    trajectory = []
    history = run_dir / "eval" / "metrics.jsonl"
    if history.exists():
        for line in history.read_text().splitlines():
            rec = json.loads(line)
            trajectory.append({k: rec[k] for k in ("step", "modes", "high_quality", "reverse_kl") if k in rec})
    return {"bench": name, "stabilization": stab, "seed": cfg.seed, "steps": run.step,
            "train_seconds": round(train_seconds, 1), "rollbacks": count_events(run_dir, "rollback"), **metrics,
            "trajectory": trajectory}


def count_events(run_dir: Path, kind: str) -> int:
    """How many `kind` events (e.g. the watchdog's rollbacks) the run's events.jsonl holds."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return 0
    return sum(json.loads(line).get("event") == kind for line in path.read_text().splitlines() if line.strip())


def format_rows(rows: list[dict]) -> str:
    """Side-by-side table of the results."""
    head = (f"{'bench':<15}{'stab.':<7}{'seed':>5}{'steps':>7}{'modes':>11}{'high q.':>9}{'rev. KL':>9}"
            f"{'rollb.':>8}{'train s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        hq = f"{r['high_quality']:.3f}" if "high_quality" in r else "-"
        lines.append(f"{r['bench']:<15}{r['stabilization']:<7}{r['seed']:>5}{r['steps']:>7}"
                     f"{r['modes']:>6}/{r['modes_total']:<4}{hq:>9}{r['reverse_kl']:>9.4f}{r['rollbacks']:>8}"
                     f"{r['train_seconds']:>9.1f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these benchmarks")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps of every run")
    parser.add_argument("--no-off", action="store_true", help="skip the stabilization-off runs")
    parser.add_argument("--no-on", action="store_true", help="skip the stabilization-on runs")
    parser.add_argument("--seed", type=int, action="append", help="train with these seeds (default: the config's)")
    parser.add_argument("--work-dir", default="runs/bench_modes", help="run directories go here")
    parser.add_argument("--out", default=None, help="also write the results as JSON")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (e.g. optim.unrolled_steps=5)")
    parser.add_argument("--label", default=None, help="name the runs (the stab. column) instead of on/off")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out_dir = Path(args.work_dir)
    rows = []
    for name in args.only or list(BENCHES):
        for stabilized in [s for s in (True, False) if not (args.no_on if s else args.no_off)]:
            for seed in args.seed or [None]:
                rows.append(run_one(name, stabilized, out_dir, args.steps, seed, args.extra, args.label))
                print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
                print("    periodic eval (step: modes, high q.): " + ", ".join(
                    f"{t['step']}: {t['modes']}" + (f" {t['high_quality']:.3f}" if "high_quality" in t else "")
                    for t in rows[-1]["trajectory"]), flush=True)
    print()
    print(format_rows(rows))
    for name in dict.fromkeys(r["bench"] for r in rows):
        print(f"target {name}: {BENCHES[name]['target']}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
