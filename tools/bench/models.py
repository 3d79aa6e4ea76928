"""Forward+backward seconds per image of BigGAN and StyleGAN2 G and D, with channels_last and torch.compile on/off.

    python tools/bench/models.py                      # CPU, reduced widths, 64 and 128 px; compile at 64 only
    python tools/bench/models.py --res 64 --no-compile
    python tools/bench/models.py --train-step --device cuda --amp bf16   # GPU: img/s of a full training step of
                                                                        # BigGAN-128 and StyleGAN2-256 (published widths)
    python tools/bench/models.py --loop-compile       # gandist's whole loop step, train.compile on vs off: demo
                                                      # DCGAN, tiny BigGAN, tiny StyleGAN2 (SN off where compiled)

Each cell is the median of --iters timed iterations after --warmup untimed ones (compilation happens in warm-up).
Ratios are against the eager, contiguous column of the same row.

--loop-compile times Trainer iterations (train_step, watchdog, outputs; as tools/bench/overhead.py) of two trainers
per config, train.compile=false and true, built from the same seed. Both are warmed up first (compilation, and every
lazy-regularization variant of the step), then run in alternating blocks of --loop-block steps so that both see the
same machine load; cells are the median ms/step over blocks (process CPU time, the machine being shared) and the
median per-block ratio eager / compiled (> 1: compile is faster). train.compile refuses spectrally normalized nets:
the DCGAN runs with model.spectral_norm=false in both trainers; BigGAN, SN throughout, prints the refusal; and
double-backward penalties: StyleGAN2 runs without R1 and path length (penalties=[]) in both.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gandist.config import ConfigError, load_config  # noqa: E402
from gandist.data.base import DataInfo  # noqa: E402
from gandist.models.base import BuildContext, count_params  # noqa: E402
from gandist.registry import ARCHS, resolve  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# reduced widths so that a CPU measures in seconds; --full uses the published configs' widths
REDUCED = {
    "biggan": ["data.kind=digits", "model.arch=biggan", "model.ch=8", "model.d_ch=8", "model.z_dim=120",
               "model.attention=[32]"],
    "stylegan2": ["data.kind=digits", "model.arch=stylegan2", "model.channel_base=1024", "model.channel_max=64",
                  "model.z_dim=128", "model.w_dim=128", "model.mapping_layers=2"],
}
PUBLISHED = {"biggan": "biggan_128.yaml", "stylegan2": "stylegan2_256.yaml"}
VARIANTS = [(False, False), (True, False), (False, True), (True, True)]  # (channels_last, compile)


def build_pair(family: str, res: int, full: bool, device: str):
    """(G, D, classes) of a family at a resolution, on device."""
    if full:
        cfg = load_config(CONFIGS / PUBLISHED[family])
    else:
        cfg = load_config(None, REDUCED[family])
    classes = 1000 if family == "biggan" else 0
    overrides = {"num_classes": None} if hasattr(cfg.model, "num_classes") else {}
    model_cfg = cfg.model.model_copy(update=overrides)
    G, D = resolve(ARCHS, model_cfg.arch, "model.arch")(model_cfg, DataInfo((3, res, res), classes), BuildContext())
    return G.to(device), D.to(device), classes


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, warmup: int, iters: int, device: str) -> float:
    """Median seconds of fn() after warm-up."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_nets(family: str, res: int, args) -> dict:
    """Seconds per image of G and D forward+backward for each (channels_last, compile) variant."""
    out = {}
    for channels_last, compiled in VARIANTS:
        if compiled and not (args.compile and res in args.compile_res):
            continue
        torch.manual_seed(0)
        G, D, classes = build_pair(family, res, args.full, args.device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
        g_fn, d_fn = (torch.compile(G), torch.compile(D)) if compiled else (G, D)
        n = args.batch
        z = torch.randn(n, G.z_dim, device=args.device)
        y = torch.randint(0, classes, (n,), device=args.device) if classes else None
        x = torch.randn(n, 3, res, res, device=args.device).to(memory_format=fmt)

        def g_step():
            g_fn(z, y).square().mean().backward()

        def d_step():
            d_fn(x, y).mean().backward()

        out[(channels_last, compiled)] = (time_fn(g_step, args.warmup, args.iters, args.device) / n,
                                          time_fn(d_step, args.warmup, args.iters, args.device) / n)
    return out


def train_step_img_per_s(family: str, res: int, args) -> tuple[float, int, int]:
    """Images per second of a full D step + G step (Adam, hinge/ns loss) at the published widths."""
    G, D, classes = build_pair(family, res, not args.reduced, args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    g_opt = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.999))
    d_opt = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.999))
    g_fn, d_fn = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)
    n = args.batch
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    real = torch.randn(n, 3, res, res, device=args.device).to(memory_format=fmt)

    def step():
        z = torch.randn(n, G.z_dim, device=args.device)
        y = torch.randint(0, classes, (n,), device=args.device) if classes else None
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            with torch.no_grad():
                fake = g_fn(z, y)
            d_loss = torch.relu(1 - d_fn(real, y)).mean() + torch.relu(1 + d_fn(fake, y)).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            g_loss = -d_fn(g_fn(z, y), y).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()

    seconds = time_fn(step, args.warmup, args.iters, args.device)
    return n / seconds, count_params(G), count_params(D)


# (config, overrides of both trainers): DCGAN's SN off (train.compile refuses SN); BigGAN's SN is part of the
# architecture, so its compiled trainer is refused at config time and the row says so; StyleGAN2 without its lazy
# R1 and path length (train.compile refuses double-backward penalties: AOT autograd has no double backward)
LOOP_CONFIGS = {"dcgan (demo_digits)": ("demo_digits.yaml", ["model.spectral_norm=false"]),
                "biggan (biggan_tiny_digits)": ("biggan_tiny_digits.yaml", []),
                "stylegan2 (stylegan2_tiny_digits, no R1/PL)": ("stylegan2_tiny_digits.yaml", ["penalties=[]"])}
LOOP_RUN = ["watchdog.enabled=true", "telemetry.progress=false", "telemetry.sample_every=0", "eval.every=0",
            "checkpoint.every=1000000", "train.steps=1000000"]


def loop_compile(config: str, sets: list[str], args) -> dict:
    """Median CPU ms/step of eager and compiled Trainer iterations over alternating blocks, and eager/compiled."""
    import tempfile

    from overhead import gandist_iteration  # tools/bench/overhead.py: one Trainer.run iteration, no periodic outputs

    from gandist.train.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for compiled in (False, True):
            cfg = load_config(CONFIGS / config, [*LOOP_RUN, *sets, f"train.device={args.device}",
                                                 f"train.compile={str(compiled).lower()}"])
            trainers[compiled] = Trainer(cfg, f"{tmp}/{compiled}", force=True)
        try:
            lazy = max([p.every for p in trainers[False].penalties] + [1])
            block = max(args.loop_block, lazy) // lazy * lazy  # every block holds the same lazy steps
            warm = {}
            for compiled, tr in trainers.items():
                t0 = time.perf_counter()  # wall: inductor compiles in worker processes
                for _ in range(2 * lazy):  # compilation, and each lazy-regularization variant of the step
                    gandist_iteration(tr)
                warm[compiled] = time.perf_counter() - t0
            ms = {False: [], True: []}
            for _ in range(args.loop_blocks):
                for compiled, tr in trainers.items():
                    _sync(args.device)
                    t0 = time.process_time()
                    for _ in range(block):
                        gandist_iteration(tr)
                    _sync(args.device)
                    ms[compiled].append((time.process_time() - t0) * 1e3 / block)
        finally:
            for tr in trainers.values():
                tr.close()
    ratios = [e / c for e, c in zip(ms[False], ms[True])]
    return {"eager_ms": statistics.median(ms[False]), "compiled_ms": statistics.median(ms[True]),
            "ratio": statistics.median(ratios), "ratios": ratios, "warmup_s": warm, "block": block,
            "batch": trainers[False].cfg.train.batch_size}


def print_loop_compile(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(f"gandist loop step, train.compile off vs on ({args.loop_blocks} alternating blocks; CPU ms per step, "
          "median over blocks; DCGAN with model.spectral_norm=false)")
    print(f"{'config':<44} {'batch':>5} {'block':>5} {'eager ms':>9} {'compiled ms':>11} {'eager/compiled':>14} "
          f"{'warm-up wall s (eager / compiled)':>34}")
    for name, (config, sets) in LOOP_CONFIGS.items():
        if args.families_loop and not any(f in name for f in args.families_loop):
            continue
        try:
            r = loop_compile(config, sets, args)
        except ConfigError as err:  # train.compile refused for this net: the reason is the row
            print(f"{name:<44} refused: {str(err).split(': ', 1)[-1][:200]}", flush=True)
            continue
        except Exception as err:  # noqa: BLE001  (a config that does not compile is a result, not a crash)
            print(f"{name:<44} FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                  flush=True)
            continue
        spread = f"{min(r['ratios']):.2f}-{max(r['ratios']):.2f}"
        print(f"{name:<44} {r['batch']:>5} {r['block']:>5} {r['eager_ms']:>9.1f} {r['compiled_ms']:>11.1f} "
              f"{r['ratio']:>6.2f} ({spread}) {r['warmup_s'][False]:>18.1f} / {r['warmup_s'][True]:.1f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", type=int, nargs="+", default=[64, 128], help="resolutions (default 64 128)")
    p.add_argument("--families", nargs="+", default=["biggan", "stylegan2"], choices=["biggan", "stylegan2"])
    p.add_argument("--batch", type=int, default=4, help="images per measured iteration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full", action="store_true", help="published widths (biggan_128 / stylegan2_256 configs)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile columns")
    p.add_argument("--compile-res", type=int, nargs="+", default=[64],
                   help="resolutions that get the torch.compile columns (compiling costs minutes on a CPU; default 64)")
    p.add_argument("--train-step", action="store_true",
                   help="img/s of a full training step of BigGAN-128 and StyleGAN2-256 instead")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="autocast dtype of --train-step")
    p.add_argument("--channels-last", action="store_true", help="channels_last in --train-step")
    p.add_argument("--reduced", action="store_true", help="--train-step with the reduced widths (a CPU smoke run)")
    p.add_argument("--loop-compile", action="store_true",
                   help="gandist loop step, train.compile off vs on: demo DCGAN, tiny BigGAN, tiny StyleGAN2")
    p.add_argument("--loop-blocks", type=int, default=4, help="alternating blocks per trainer in --loop-compile")
    p.add_argument("--loop-block", type=int, default=8, help="steps per block in --loop-compile (rounded to lazy k)")
    p.add_argument("--loop-only", dest="families_loop", nargs="+", default=[],
                   help="--loop-compile only these (dcgan, biggan, stylegan2)")
    args = p.parse_args(argv)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}",
          flush=True)

    if args.loop_compile:
        print_loop_compile(args)
        return 0

    if args.train_step:
        print(f"{'net':<16} {'G params':>12} {'D params':>12} {'img/s':>10}   (amp {args.amp}, compile {args.compile})")
        for family, res in (("biggan", 128), ("stylegan2", 256)):
            ips, gp, dp = train_step_img_per_s(family, res, args)
            print(f"{family + '-' + str(res):<16} {gp:>12,} {dp:>12,} {ips:>10.1f}", flush=True)
        return 0

    cols = [v for v in VARIANTS if args.compile or not v[1]]
    names = {(False, False): "eager", (True, False): "ch_last", (False, True): "compile", (True, True): "cl+comp"}
    print("forward+backward ms per image (ratio to eager)" + ("" if args.full else "; reduced widths, see REDUCED"))
    print(f"{'family':<10} {'px':>4} {'net':>3} " + " ".join(f"{names[c]:>16}" for c in cols))
    for family in args.families:
        for res in args.res:
            results = bench_nets(family, res, args)
            for k, net in enumerate(("G", "D")):
                base = results[(False, False)][k]
                cells = [f"{results[c][k] * 1e3:8.2f} ({results[c][k] / base:4.2f}x)" if c in results else "-"
                         for c in cols]
                print(f"{family:<10} {res:>4} {net:>3} " + " ".join(f"{c:>16}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
