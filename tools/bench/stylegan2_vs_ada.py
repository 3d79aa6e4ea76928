"""gandist's StyleGAN2 against stylegan2-ada-pytorch's training/networks.py, forward + backward, in one process.

    python tools/bench/stylegan2_vs_ada.py --ada-path /tmp/sg2ada            # both configs, CPU, one thread
    python tools/bench/stylegan2_vs_ada.py --ada-path /tmp/sg2ada --config tiny --rounds 15

--ada-path is a folder holding a public checkout of NVlabs/stylegan2-ada-pytorch (at least training/, torch_utils/
and dnnlib/); it is imported only here, at run time, and only for measurement (its licence is non-commercial, and no
gandist file contains its code). On CPU its custom ops fall back to their reference implementations by themselves.
Without --ada-path the script says so and exits 0.

Method: the same config and the same parameter counts (asserted exactly), both nets in training mode (ADA's G then
uses its non-fused modulation, as it trains), random noise, gandist's style mixing off (ADA's G.forward does none).
Each round times one block of --iters forward + backward passes of every (net, implementation) in turn, so the two
implementations see the same machine load; the table gives the median block over --rounds rounds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gandist.config import load_config  # noqa: E402
from gandist.data.base import DataInfo  # noqa: E402
from gandist.models.base import BuildContext  # noqa: E402
from gandist.registry import ARCHS, resolve  # noqa: E402

# name -> (resolution, image channels, classes, channel_base, channel_max, z = w dim, mapping layers, batch)
CONFIGS = {
    "tiny": (16, 1, 10, 512, 64, 64, 2, 32),  # configs/stylegan2_tiny_digits.yaml
    "64px": (64, 3, 10, 8192, 256, 256, 2, 8),
}


def param_count(net: torch.nn.Module) -> int:
    """Number of parameters of a net."""
    return sum(p.numel() for p in net.parameters())


def build_gandist(cfg_tuple):
    """gandist (G, D) of a config, style mixing off so that G.forward is mapping + synthesis as ADA's."""
    res, ch, classes, cbase, cmax, zdim, maps, _ = cfg_tuple
    overrides = ["model.arch=stylegan2", f"model.z_dim={zdim}", f"model.w_dim={zdim}", f"model.mapping_layers={maps}",
                 f"model.d_mapping_layers={maps}", f"model.channel_base={cbase}", f"model.channel_max={cmax}",
                 "model.style_mixing_prob=0", f"model.conditional={str(bool(classes)).lower()}"]
    cfg = load_config(None, overrides)
    return resolve(ARCHS, "stylegan2", "model.arch")(cfg.model, DataInfo((ch, res, res), classes), BuildContext())


def build_ada(ada_path: str, cfg_tuple):
    """stylegan2-ada-pytorch's (G, D) of the same config (fp32 everywhere, no conv clamp)."""
    sys.path.insert(0, ada_path)
    from training import networks  # noqa: PLC0415  (the checkout's, imported only at run time)

    res, ch, classes, cbase, cmax, zdim, maps, _ = cfg_tuple
    common = dict(channel_base=cbase, channel_max=cmax, num_fp16_res=0, conv_clamp=None)
    G = networks.Generator(z_dim=zdim, c_dim=classes, w_dim=zdim, img_resolution=res, img_channels=ch,
                           mapping_kwargs=dict(num_layers=maps), synthesis_kwargs=common)
    D = networks.Discriminator(c_dim=classes, img_resolution=res, img_channels=ch, mapping_kwargs=dict(num_layers=maps),
                               **common)
    return G, D


def step_fns(G, D, cfg_tuple, ada: bool):
    """(G fwd+bwd, D fwd+bwd) closures on fixed inputs."""
    res, ch, classes, _, _, zdim, _, batch = cfg_tuple
    z = torch.randn(batch, zdim)
    y = torch.arange(batch) % classes if classes else None
    c = torch.nn.functional.one_hot(y, classes).float() if classes else torch.zeros(batch, 0)
    img = torch.randn(batch, ch, res, res)
    label = c if ada else y

    def g_step():
        G.zero_grad(set_to_none=True)
        G(z, label).square().mean().backward()

    def d_step():
        D.zero_grad(set_to_none=True)
        D(img, label).square().mean().backward()

    return g_step, d_step


def run_config(name: str, args) -> list[dict]:
    """Median ms per block of G and D fwd+bwd for gandist and ADA, interleaved."""
    cfg_tuple = CONFIGS[name]
    torch.manual_seed(0)
    ours = build_gandist(cfg_tuple)
    theirs = build_ada(args.ada_path, cfg_tuple)
    for label, a, b in (("G", ours[0], theirs[0]), ("D", ours[1], theirs[1])):
        if param_count(a) != param_count(b):
            raise SystemExit(f"{name}: {label} parameter counts differ: gandist {param_count(a):,} vs "
                             f"ADA {param_count(b):,}; the comparison would not be like for like")
    for net in (*ours, *theirs):
        net.train()
    fns = {"gandist": step_fns(*ours, cfg_tuple, ada=False), "ada": step_fns(*theirs, cfg_tuple, ada=True)}
    times = {(impl, net): [] for impl in fns for net in "GD"}
    for _ in range(args.warmup):
        for g_step, d_step in fns.values():
            g_step(), d_step()
    for r in range(args.rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]  # alternate who goes first
        for impl in order:
            for net, fn in zip("GD", fns[impl]):
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    fn()
                times[(impl, net)].append((time.perf_counter() - t0) / args.iters * 1e3)
    rows = []
    for net, model in zip("GD", ours):
        ms_ours, ms_ada = (statistics.median(times[(impl, net)]) for impl in ("gandist", "ada"))
        ratios = [a / b for a, b in zip(times[("gandist", net)], times[("ada", net)])]
        rows.append(dict(config=name, net=net, params=param_count(model), gandist_ms=ms_ours, ada_ms=ms_ada,
                         ratio=ms_ours / ms_ada, ratio_iqr=_iqr(ratios)))
    return rows


def _iqr(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return q[0], q[2]


def main(argv: list[str] | None = None) -> int:
    """Print the side-by-side table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ada-path", help="a stylegan2-ada-pytorch checkout (with training/, torch_utils/, dnnlib/)")
    ap.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    ap.add_argument("--rounds", type=int, default=11, help="interleaved rounds; the table gives the median")
    ap.add_argument("--iters", type=int, default=2, help="fwd+bwd passes per timed block")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not args.ada_path:
        print("skipped: pass --ada-path PATH to a checkout of github.com/NVlabs/stylegan2-ada-pytorch to compare with")
        return 0
    if not (Path(args.ada_path) / "training" / "networks.py").is_file():
        print(f"--ada-path {args.ada_path}: no training/networks.py there; point it at the checkout's root")
        return 2
    torch.set_num_threads(args.threads)
    names = list(CONFIGS) if args.config == "all" else [args.config]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds x {args.iters} iters")
    print("| config | net | params | gandist ms | ADA ms | gandist / ADA (median; IQR of per-round ratios) |")
    print("|---|---|---:|---:|---:|---|")
    for name in names:
        for row in run_config(name, args):
            lo, hi = row["ratio_iqr"]
            print(f"| {row['config']} | {row['net']} | {row['params']:,} | {row['gandist_ms']:.1f} | "
                  f"{row['ada_ms']:.1f} | {row['ratio']:.2f}x ({lo:.2f}-{hi:.2f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
