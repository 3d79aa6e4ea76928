"""Bench `gandist report` on a synthetic 1,000,000-step run (log_every 50: 20,000 records, a few rollbacks).

    python tools/bench/report.py [--steps 1000000] [--log-every 50] [--rollbacks 3] [--work-dir DIR]

prints the render seconds (reading + panels + HTML; total adds the write), the CPU seconds, the page size and the
points and heatmap cells drawn. The run dir is synthetic
but shaped as `gandist train` writes it: Signals records with 24 sigma layers, checkpoint/diverged/rollback events
and replayed steps after each rollback (the abandoned future stays in metrics.jsonl, as in a real run).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LAYERS = [f"{net}/blocks.{i}.conv{j}" for net in ("G", "D") for i in range(6) for j in (1, 2)]


def _record(step: int, rng, t: float, lr: float, spike: float = 1.0) -> dict:
    decay = 1.0 / (1.0 + step / 2e5)
    noise = rng.standard_normal
    return {
        "time": t, "step": step, "images_seen": step * 256,
        "losses": {"D": float((1.2 + 0.2 * noise()) * spike), "G": float(0.8 + 0.3 * noise()),
                   "D/r1": float(abs(0.05 * decay + 0.01 * rng.standard_normal())),
                   "G/path_length": float(abs(0.2 + 0.02 * rng.standard_normal()))},
        "d_real": float(0.5 + 0.2 * rng.standard_normal()), "d_fake": float(-0.5 + 0.2 * rng.standard_normal()),
        "grad_norm": {"D": float(abs(2 + noise()) * spike), "G": float(abs(1 + 0.5 * noise()))},
        "sigma": {name: float(1 + 0.1 * i + step / 1e6 + 0.01 * noise()) for i, name in enumerate(LAYERS)},
        "nonfinite": 0, "seconds": {"D": 0.11, "Dreg": 0.02, "G": 0.09, "Greg": 0.03}, "data_wait": 0.004,
        "img_per_sec": float(2300 + 100 * rng.standard_normal()), "lr": {"G": 0.0025 * lr, "D": 0.0025 * lr},
        "ema_distance": float(0.01 * decay), "skipped_samples": 0, "verdict": "diverged" if spike > 100 else "ok",
    }


def write_synthetic_run(run_dir: Path, steps: int = 1_000_000, log_every: int = 50, rollbacks: int = 3,
                        seed: int = 0) -> Path:
    """A run dir as a long run with `rollbacks` lr-spike divergences would leave it (metrics, events, config)."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_every = 10 * log_every
    diverge_at = [int(steps * (i + 1) / (rollbacks + 1)) // log_every * log_every + log_every // 2
                  for i in range(rollbacks)]
    t, lr = 1.7e9, 1.0
    metrics, events = [], [{"time": t, "step": 0, "event": "start", "resumed_from": None, "world_size": 8,
                            "strategy": "ddp"}]
    step = log_every
    while step <= steps:
        t += 5.0
        metrics.append(json.dumps(_record(step, rng, t, lr)))
        if step % ckpt_every == 0:
            events.append(json.dumps({"time": t, "step": step, "event": "checkpoint", "healthy": True}))
        if diverge_at and step + log_every > diverge_at[0]:
            bad, restored = diverge_at.pop(0), (step - log_every) // ckpt_every * ckpt_every
            value = 1.423e4
            reason = f"loss/D = {value:.4g} is past the bound 10000"
            signals = {"loss/D": value, "grad_norm/D": 4624.4, "step": bad}
            events.append(json.dumps({"time": t + 1, "step": bad, "event": "diverged", "reason": reason,
                                      "signals": signals}))
            events.append(json.dumps({"time": t + 2, "step": restored, "event": "rollback", "reason": reason,
                                      "signals": signals, "diverged_step": bad, "checkpoint_step": restored,
                                      "mitigation": {"lr_scale": 0.5, "skip_batches": 0, "reseed": True,
                                                     "r1_scale": 1.0}}))
            metrics.append(json.dumps(_record(bad, rng, t + 3, lr, spike=1.2e4)))
            lr *= 0.5
            step = restored
        step += log_every
    events.append(json.dumps({"time": t + 5, "step": steps, "event": "end", "steps": steps}))
    (run_dir / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
    (run_dir / "events.jsonl").write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in events) + "\n")
    (run_dir / "config.yaml").write_text(
        "name: synthetic-1m\nmodel: {arch: stylegan2, z_dim: 512}\ndata: {kind: webdataset, resolution: 256}\n"
        f"loss: {{kind: ns}}\ntrain: {{steps: {steps}, batch_size: 256}}\ntelemetry: {{log_every: {log_every}}}\n"
        "optim: {g: {lr: 0.0025}, d: {lr: 0.0025}}\ndistributed: {strategy: ddp}\n")
    return run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--rollbacks", type=int, default=3)
    parser.add_argument("--work-dir", help="where to write the synthetic run (default: a temp dir)")
    args = parser.parse_args()
    from gandist.report.build import write_report

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="gandist-report-bench-"))
    run_dir = write_synthetic_run(root / "run", args.steps, args.log_every, args.rollbacks)
    t0, c0 = time.perf_counter(), time.process_time()
    report = write_report(str(run_dir), str(root / "report.html"))
    total, cpu = time.perf_counter() - t0, time.process_time() - c0  # cpu: what a busy machine does not inflate
    points = sum(len(line.x) for p in report.panels for line in p.lines)
    cells = sum(p.heat.z.size for p in report.panels if p.heat is not None)
    print(f"{'records':>10} {'rollbacks':>9} {'render s':>9} {'total s':>8} {'cpu s':>6} {'HTML MB':>8} {'points':>8} "
          f"{'cells':>8}")
    print(f"{len(report.run.records):>10,} {len(report.run.events_of('rollback')):>9} {report.seconds:>9.2f} "
          f"{total:>8.2f} {cpu:>6.2f} {len(report.html) / 1e6:>8.2f} {points:>8,} {cells:>8,}")
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    sys.exit(main())
