"""gandist's training step against a bare hand-written torch loop on the same nets, batch, loss and optimizer.

    python tools/bench/overhead.py                  # CPU: demo DCGAN, tiny BigGAN, tiny StyleGAN2; 4 blocks of 20 steps
    python tools/bench/overhead.py --quick          # 2 blocks each (a smoke run, noisier)
    python tools/bench/overhead.py --device cuda --json overhead.json

What is timed. gandist: one loop iteration as Trainer.run does it, less the periodic outputs both loops would share
(checkpoints, sample grids, evaluation): lr.apply, train_step (phases, EMA), check_health (watchdog on: sigmas, EMA
distance, detectors, the verdict's all-reduce) and outputs.publish (sinks, metrics.jsonl on log steps). Bare: what a
person writes by hand for the same config: the same G and D (gandist's model registry, same seed), the digits tensor
indexed by torch.randint, torch.randn latents, the plain NS/hinge loss, torch Adam with the same (lazily rescaled)
hyper-parameters and the same kernel choice (foreach on CPU, fused on CUDA), `requires_grad_` toggling of the other
net, the same penalties at their intervals (StyleGAN2: lazy R1 on D and path length on G every 4 steps, weights x k,
stylegan2-ada's phases; BigGAN: orthogonal regularization of G every step) and the same EMA of G.

Both loops run in alternating blocks of `--block` steps (a multiple of watchdog.sigma_every and of every lazy
interval, so that each block holds the same work), so both see the same machine load; the table gives the median
over blocks of ms per step and the median of the per-block ratio gandist / bare (its interquartile range beside it).
Target: ratio <= 1.05.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gandist.config import load_config  # noqa: E402
from gandist.data.sources import build_source  # noqa: E402
from gandist.models.base import BuildContext  # noqa: E402
from gandist.objectives.penalties import build_penalties  # noqa: E402
from gandist.optim import lazy_optim  # noqa: E402
from gandist.registry import ARCHS, resolve  # noqa: E402
from gandist.train import outputs  # noqa: E402
from gandist.train.loop import Trainer  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODELS = {"dcgan (demo_digits)": "demo_digits.yaml", "biggan (biggan_tiny_digits)": "biggan_tiny_digits.yaml",
          "stylegan2 (stylegan2_tiny_digits)": "stylegan2_tiny_digits.yaml"}
OTHER = {"cpu": "wall", "wall": "cpu"}
RUN = ["watchdog.enabled=true", "telemetry.progress=false", "telemetry.sample_every=0", "eval.every=0",
       "checkpoint.every=1000000", "train.steps=1000000", "train.ema.start_step=0"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gandist_iteration(tr: Trainer) -> None:
    """One iteration of Trainer.run's body without the periodic outputs (samples, evaluation, checkpoints)."""
    t0 = time.perf_counter()
    tr.lr.apply(tr.step, None)
    sig = tr.train_step()
    tr.check_health(sig)
    outputs.publish(tr, sig, time.perf_counter() - t0)


class BareLoop:
    """The hand-written loop of a config: its nets, data, loss, Adam, penalties and EMA, nothing else."""

    def __init__(self, cfg, device: torch.device) -> None:
        self.cfg, self.device, self.step = cfg, device, 0
        source = build_source(cfg.data)
        self.images, self.labels = source.images.to(device), source.labels.to(device)
        torch.manual_seed(cfg.seed)
        self.G, self.D = (m.to(device) for m in resolve(ARCHS, cfg.model.arch, "model.arch")(
            cfg.model, source.info, BuildContext(None, 1)))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.pen = {}
        for p in cfg.penalties:
            if p.kind not in ("r1", "path_length", "ortho"):
                raise SystemExit(f"the bare loop writes r1, path_length and ortho by hand, not {p.kind}")
            self.pen[p.kind] = p
        self.pl_mean = torch.zeros((), device=device)
        fused = device.type == "cuda"
        self.opt = {}
        lazy = build_penalties(cfg.penalties)  # only their net and interval: the lr / betas rescaling r = k/(k+1)
        for name, net in (("G", self.G), ("D", self.D)):
            setup = lazy_optim(getattr(cfg.optim, name.lower()), "auto", lazy, name)
            self.opt[name] = torch.optim.Adam(net.parameters(), lr=setup.lr, betas=setup.betas, eps=setup.eps,
                                              foreach=not fused, fused=fused or None)
        self.batch = cfg.train.batch_size
        self.z_dim, self.classes = self.G.z_dim, self.G.num_classes

    def _d_loss(self, real, fake):
        if self.cfg.loss.kind == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def _g_loss(self, fake):
        return -fake.mean() if self.cfg.loss.kind == "hinge" else F.softplus(-fake).mean()

    def _latents(self, n: int):
        z = torch.randn(n, self.z_dim, device=self.device)
        y = torch.randint(0, self.classes, (n,), device=self.device) if self.classes else None
        return z, y

    def _phase(self, net: str, loss) -> None:
        opt = self.opt[net]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def iteration(self) -> None:
        """Dmain, Dreg (lazy R1), Gmain (+ ortho), Greg (lazy path length), EMA: one G step."""
        G, D, n, step = self.G, self.D, self.batch, self.step
        idx = torch.randint(0, self.images.shape[0], (n,), device=self.device)
        real, real_y = self.images[idx], self.labels[idx]
        z, y = self._latents(n)
        G.requires_grad_(False), D.requires_grad_(True)
        with torch.no_grad():
            fake = G(z, y)
        self._phase("D", self._d_loss(D(real, real_y), D(fake, y)))
        r1 = self.pen.get("r1")
        if r1 is not None and step % r1.every == 0:
            x = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(x, real_y).sum(), x, create_graph=True)
            self._phase("D", grad.square().flatten(1).sum(1).mean() * (0.5 * r1.weight * r1.every))
        G.requires_grad_(True), D.requires_grad_(False)
        z, y = self._latents(n)
        loss = self._g_loss(D(G(z, y), y))
        ortho = self.pen.get("ortho")
        if ortho is not None:
            loss = loss + ortho.weight * 0.5 * self._ortho_sum()
        self._phase("G", loss)
        pl = self.pen.get("path_length")
        if pl is not None and step % pl.every == 0:
            self._phase("G", self._path_length(pl) * (pl.weight * pl.every))
        D.requires_grad_(True)
        with torch.no_grad():
            decay = self.cfg.train.ema.decay
            for p_ema, p in zip(self.G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, decay))
            for b_ema, b in zip(self.G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        self.step += 1

    def _ortho_sum(self) -> torch.Tensor:
        skip = {id(p) for p in self.G.shared.parameters()} if hasattr(self.G, "shared") else set()
        total = 0.0
        for p in self.G.parameters():
            if p.ndim >= 2 and id(p) not in skip:
                w = p.reshape(p.shape[0], -1)
                total = total + ((w @ w.t()) * (1 - torch.eye(w.shape[0], device=w.device))).square().sum()
        return total

    def _path_length(self, cfg) -> torch.Tensor:
        n = max(1, self.batch // cfg.batch_shrink)
        z, y = self._latents(n)
        ws = self.G.mapping(z, y)
        img = self.G.synthesis(ws)
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), cfg.decay)
        return (lengths - self.pl_mean).square().mean()


def block_size(cfg, wanted: int) -> int:
    """The smallest multiple of watchdog.sigma_every and of every lazy interval that is >= wanted."""
    unit = math.lcm(cfg.watchdog.sigma_every, cfg.watchdog.ema_every, *[p.every for p in cfg.penalties])
    return unit * max(1, math.ceil(wanted / unit))


def bench_model(name: str, config: str, args) -> dict:
    """Interleaved blocks of the gandist and the bare loop; medians, the per-block ratio and its IQR."""
    cfg = load_config(CONFIGS / config, [*RUN, f"train.device={args.device}"])
    block = block_size(cfg, args.block)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, f"{tmp}/run", force=True)
        bare = BareLoop(cfg, tr.strategy.device)
        device = tr.strategy.device
        loops = {"gandist": lambda: gandist_iteration(tr), "bare": bare.iteration}
        times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in loops}
        try:
            for fn in loops.values():  # warm-up: allocator, first power iterations, lazy steps
                for _ in range(args.warmup):
                    fn()
            for b in range(args.blocks):
                order = list(loops) if b % 2 == 0 else list(loops)[::-1]  # alternate who goes first
                for key in order:
                    _sync(device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(block):
                        loops[key]()
                    _sync(device)
                    times[key]["wall"].append((time.perf_counter() - t0) / block)
                    times[key]["cpu"].append((time.process_time() - c0) / block)
        finally:
            tr.close()
    out = {"model": name, "config": f"configs/{config}", "batch": cfg.train.batch_size, "block": block,
           "blocks": args.blocks}
    for clock in ("wall", "cpu"):
        g, b = times["gandist"][clock], times["bare"][clock]
        ratios = sorted(x / y for x, y in zip(g, b))
        q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) >= 2 else ratios * 3
        out[clock] = {"gandist_ms": 1e3 * statistics.median(g), "bare_ms": 1e3 * statistics.median(b),
                      "ratio": statistics.median(ratios), "ratio_iqr": [q[0], q[2]],
                      "gandist_block_ms": [1e3 * t for t in g], "bare_block_ms": [1e3 * t for t in b]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--blocks", type=int, default=4, help="alternating blocks per loop (default 4)")
    p.add_argument("--block", type=int, default=20, help="steps per block, rounded up to the intervals' multiple")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps of each loop first")
    p.add_argument("--only", default=None, help="only models whose name contains this")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the shared 2-core machine)")
    p.add_argument("--quick", action="store_true", help="2 blocks, 2 warm-up steps (a smoke run)")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None,
                   help="the clock of the table: process CPU time (default on CPU: immune to other jobs' load on "
                        "a shared machine) or wall time (default on CUDA, synchronized)")
    p.add_argument("--json", default=None, help="also write the results (with every block's time) here")
    args = p.parse_args(argv)
    args.clock = args.clock or ("wall" if args.device == "cuda" else "cpu")
    if args.quick:
        args.blocks, args.warmup = 2, 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; run without it for the CPU table")
        return 2
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, watchdog on; "
          f"median of {args.blocks} alternating blocks", flush=True)
    clock = args.clock
    print(f"{'model':36} {'batch':>5} {'block':>5} {'gandist ms':>11} {'bare ms':>9} {'ratio':>6} {'IQR':>12} "
          f"{'other clock':>12}   ({clock} time per step; other clock: the {OTHER[clock]} ratio)")
    rows = []
    for name, config in MODELS.items():
        if args.only is not None and args.only not in name:
            continue
        r = bench_model(name, config, args)
        rows.append(r)
        c, o = r[clock], r[OTHER[clock]]
        print(f"{r['model']:36} {r['batch']:5d} {r['block']:5d} {c['gandist_ms']:11.1f} {c['bare_ms']:9.1f} "
              f"{c['ratio']:6.3f} {c['ratio_iqr'][0]:.3f}-{c['ratio_iqr'][1]:.3f} {o['ratio']:12.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2) + "\n")
    worst = max((r[clock]["ratio"] for r in rows), default=0.0)
    print(f"target gandist / bare <= 1.05: {'met' if worst <= 1.05 else 'NOT met'} (worst {worst:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
