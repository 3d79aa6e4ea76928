"""Step time with the stability watchdog on versus off, for the demo DCGAN and a BigGAN-width model, in one run.

    python tools/bench/watchdog.py                       # CPU: demo digits DCGAN + BigGAN-32 width (ch 64, 4 D steps)
    python tools/bench/watchdog.py --blocks 6 --device cuda

Two trainers per model (watchdog on / off) run in alternating blocks of `watchdog.sigma_every` steps, so each block
holds exactly one power-iteration and EMA-distance check and both trainers see the same machine load. Printed per
model: median seconds per G step of each, their ratio, and the watchdog's own share of the "on" trainer's step time
(measured around its calls: observe + agree + resolve + before_step), which is immune to load noise. Target <= 3%.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gandist.config import load_config  # noqa: E402
from gandist.train.loop import Trainer  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODELS = {
    "demo (dcgan, digits 16px)": (CONFIGS / "demo_digits.yaml", []),
    # BigGAN's CIFAR width (G 4.3M, D 4.2M params, 4 D steps per G step) on the bundled digits at 32 px
    "biggan-32 width (digits 32px)": (CONFIGS / "biggan_32.yaml", [
        "data={kind: digits, resolution: 32, channels: 3}", "train.batch_size=8"]),
}


class TimedWatchdog:
    """Wraps a Watchdog and adds up the seconds spent in it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __getattr__(self, name):
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def make_trainer(config: Path, sets: list[str], watchdog: bool, device: str, run_dir: str) -> Trainer:
    """A Trainer (not run) of `config` with the watchdog on or off."""
    cfg = load_config(config, [*sets, f"watchdog.enabled={str(watchdog).lower()}", f"train.device={device}",
                               "telemetry.progress=false", "telemetry.sample_every=0", "eval.every=0"])
    return Trainer(cfg, run_dir, force=True)


def one_step(trainer: Trainer) -> float:
    """Seconds of one G step as the loop runs it (train_step + check_health)."""
    if trainer.strategy.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sig = trainer.train_step()
    trainer.check_health(sig)
    if trainer.strategy.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_model(name: str, config: Path, sets: list[str], blocks: int, device: str) -> dict:
    """Interleaved blocks of both trainers; returns the medians, the ratio and the watchdog's own share."""
    with tempfile.TemporaryDirectory() as tmp:
        off = make_trainer(config, sets, False, device, f"{tmp}/off")
        on = make_trainer(config, sets, True, device, f"{tmp}/on")
        on.watchdog = TimedWatchdog(on.watchdog)
        block = on.cfg.watchdog.sigma_every
        times = {"off": [], "on": []}
        try:
            for trainer in (off, on):  # warm-up (allocator, first power iterations)
                for _ in range(2):
                    one_step(trainer)
            on.watchdog.seconds = 0.0
            for _ in range(blocks):
                for key, trainer in (("off", off), ("on", on)):
                    times[key].append(sum(one_step(trainer) for _ in range(block)) / block)
        finally:
            off.close()
            on.close()
    on_total = sum(times["on"]) * block
    return {"model": name, "off": statistics.median(times["off"]), "on": statistics.median(times["on"]),
            "share": on.watchdog.seconds / on_total, "steps": blocks * block}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4, help="Alternating blocks of sigma_every steps per trainer.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", default=None, help="Run only models whose name contains this.")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"{'model':32} {'steps':>6} {'off s/step':>11} {'on s/step':>10} {'on/off':>7} {'watchdog share':>15}")
    for name, (cfg, sets) in MODELS.items():
        if args.only is None or args.only in name:
            r = bench_model(name, cfg, sets, args.blocks, args.device)
            print(f"{r['model']:32} {r['steps']:6d} {r['off']:11.4f} {r['on']:10.4f} {r['on'] / r['off']:7.3f} "
                  f"{100 * r['share']:14.2f}%", flush=True)


if __name__ == "__main__":
    main()
