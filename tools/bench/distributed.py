"""Per-rank memory (parameters, gradients, optimizer state) and step time of ddp and zero1/2/3 at world size 2.

    DS_ACCELERATOR=cpu python tools/bench/distributed.py [--arch biggan --resolution 128 --steps 2 --out FILE]

Bytes are measured from the tensors the strategies hold (unique storages), not estimated:
- params: the module's parameters as stored on this rank (ZeRO-3: its partition) + ZeRO's fp32 master partition;
- grads: what holds gradients right after the last backward of a phase, before the step (p.grad, ZeRO's
  partitioned gradient buffers), summed over the G and D phases;
- optim: the Adam moments in the (inner) optimizer's state.
Step time: mean seconds per G step (D phase + G phase, hinge loss) after one warm-up step, on 2 gloo processes.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time

import torch


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one buffer count once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or not torch.is_tensor(t) or t.numel() == 0:
            continue
        s = t.untyped_storage()
        if s.data_ptr() in seen:
            continue
        seen.add(s.data_ptr())
        total += s.nbytes()
    return total


def _flat(x):
    if torch.is_tensor(x):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _flat(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _flat(v)


def grad_tensors(strategy, name: str) -> list:
    """Tensors holding `name`'s gradients now (after backward, before step)."""
    module = strategy.module(name)
    out = [p.grad for p in module.parameters()]
    engine = getattr(strategy, "engines", {}).get(name)
    if engine is not None:
        opt = engine.optimizer
        out += list(_flat(getattr(opt, "averaged_gradients", None)))
        for attr in ("grads_in_partition", "grad_partitions_flat_buffer"):
            out += list(_flat(getattr(opt, attr, None)))
        for flat in getattr(opt, "single_partition_of_fp32_groups", []) + list(
                getattr(opt, "fp32_partitioned_groups_flat", [])):
            out.append(flat.grad)
    return out


def param_tensors(strategy, name: str) -> list:
    """This rank's parameter storage for `name`, plus ZeRO's fp32 master partitions."""
    module = strategy.module(name)
    out = [getattr(p, "ds_tensor", p) for p in module.parameters()]
    engine = getattr(strategy, "engines", {}).get(name)
    if engine is not None:
        opt = engine.optimizer
        out += list(getattr(opt, "single_partition_of_fp32_groups", [])) + list(
            getattr(opt, "fp32_partitioned_groups_flat", []))
    return out


def optim_tensors(strategy, name: str) -> list:
    engine = getattr(strategy, "engines", {}).get(name)
    optimizer = engine.optimizer.optimizer if engine is not None else strategy.optimizers[name]
    return list(_flat(dict(optimizer.state)))


class _StandIn(torch.nn.Module):
    """MLP with a given parameter count (BigGAN-128: G 70.4M, D 88.0M): same bytes, little compute."""

    def __init__(self, d_in: int, d_out: int, millions: float, width: int = 4096) -> None:
        super().__init__()
        inner = max(0, round((millions * 1e6 - width * (d_in + d_out)) / (width * width)))
        dims = [d_in] + [width] * (inner + 1) + [d_out]
        layers = []
        for a, b in zip(dims, dims[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.LeakyReLU(0.2)]
        self.net = torch.nn.Sequential(*layers[:-1])
        self.z_dim, self.num_classes = d_in, 0

    def forward(self, x, y=None):
        return self.net(x).squeeze(-1)


def build_nets(args, cfg, info):
    """The real model from the registry, or (--standin) MLPs of BigGAN-128's parameter counts."""
    if args.standin:
        return _StandIn(120, 768, 70.4), _StandIn(768, 1, 88.0)
    from gandist.models.base import BuildContext
    from gandist.registry import ARCHS, resolve

    return resolve(ARCHS, args.arch, "model.arch")(cfg.model, info, BuildContext(None, 1))


def _worker(rank: int, world: int, port: int, strategy_name: str, args, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    import torch.nn.functional as F

    from gandist.config import load_config
    from gandist.data.base import DataInfo
    from gandist.strategies import build_strategy
    from gandist.strategies.base import OptimSetup

    # the nets are built for `info` below; the data kind only has to be one an image model accepts
    data = "data.kind=toy2d" if args.arch == "mlp" else "data.kind=digits"
    cfg = load_config(None, [data, f"model.arch={args.arch}", f"distributed.strategy={strategy_name}",
                             f"train.batch_size={args.batch}", "train.device=cpu", f"train.amp={args.amp}"])
    info = DataInfo((768,) if args.standin else (3, args.resolution, args.resolution),
                    0 if args.standin else args.classes, (-1.0, 1.0))
    torch.manual_seed(0)
    G, D = build_nets(args, cfg, info)
    s = build_strategy(cfg)
    adam = OptimSetup(1e-4, (0.0, 0.999), 1e-8, 0.0)
    s.setup(G, D, {"G": adam, "D": adam}, 1, 0.0, args.amp)
    n = args.batch // world
    grads = {}
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(step * world + rank)
        z = torch.randn(n, G.z_dim, generator=gen)
        y = torch.randint(0, info.num_classes, (n,), generator=gen) if info.num_classes else None
        real = torch.rand(n, *info.shape, generator=gen) * 2 - 1
        with s.phase("D"):
            with torch.no_grad(), s.autocast():
                fake = s.net("G")(z, y)
            with s.autocast():
                loss = F.relu(1 - s.net("D")(real, y)).float().mean() + F.relu(1 + s.net("D")(fake, y)).float().mean()
            s.backward(loss, "D")
            grads["D"] = storage_bytes(grad_tensors(s, "D"))
        s.step("D")
        with s.phase("G"), s.autocast():
            loss = -s.net("D")(s.net("G")(z, y), y).float().mean()
            s.backward(loss, "G")
            grads["G"] = storage_bytes(grad_tensors(s, "G"))
        s.step("G")
        times.append(time.perf_counter() - t0)
    result = {
        "params": sum(storage_bytes(param_tensors(s, k)) for k in ("G", "D")),
        "grads": grads["G"] + grads["D"],
        "optim": sum(storage_bytes(optim_tensors(s, k)) for k in ("G", "D")),
        "step_s": sum(times[1:]) / max(len(times) - 1, 1),
        "num_params": sum(int(getattr(p, "ds_numel", p.numel())) for k in ("G", "D") for p in s.module(k).parameters()),
    }
    queue.put((rank, result))
    s.close()


def measure(strategy: str, args) -> dict:
    """Run one strategy on 2 processes; rank 0's measurements."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, strategy, args, queue), nprocs=2, join=True, start_method="spawn")
    ranks = dict(queue.get(timeout=60) for _ in range(2))
    # per-rank bytes of the rank that holds the most: ZeRO's partitions are not equal (a tensor that straddles a
    # partition boundary is held whole by both ranks' gradient buffers)
    worst = max(ranks, key=lambda r: ranks[r]["grads"] + ranks[r]["optim"])
    return {**ranks[worst], "rank": worst, "per_rank_grad_optim": [ranks[r]["grads"] + ranks[r]["optim"]
                                                                   for r in sorted(ranks)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="biggan", help="model.arch (default biggan: BigGAN-128, ch 96)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2, help="global batch (per rank: batch / 2)")
    parser.add_argument("--steps", type=int, default=2, help="steps per strategy; the first is warm-up")
    parser.add_argument("--strategies", default="ddp,zero1,zero2,zero3")
    parser.add_argument("--standin", action="store_true",
                        help="MLPs with BigGAN-128's parameter counts (G 70.4M, D 88.0M) instead of the real "
                             "model: the same bytes at a fraction of the compute (for small CPU machines)")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off",
                        help="train.amp: bf16 runs ddp under autocast and ZeRO with bf16 weights and fp32 gradients")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    rows = {name: measure(name, args) for name in args.strategies.split(",")}
    base = rows.get("ddp")
    gib = 2**30
    model = "stand-in MLPs" if args.standin else f"{args.arch} {args.resolution}px"
    print(f"{model}, {next(iter(rows.values()))['num_params'] / 1e6:.1f}M parameters, train.amp={args.amp}, "
          "world size 2, per-rank bytes measured from the strategies' tensors (the fuller rank)")
    print(f"{'strategy':9} {'params GiB':>10} {'grads GiB':>10} {'optim GiB':>10} {'grad+optim':>11} "
          f"{'vs ddp':>7} {'step s':>8} {'vs ddp':>7}")
    for name, r in rows.items():
        go = r["grads"] + r["optim"]
        ratio = go / (base["grads"] + base["optim"]) if base else float("nan")
        t_ratio = r["step_s"] / base["step_s"] if base else float("nan")
        print(f"{name:9} {r['params'] / gib:10.3f} {r['grads'] / gib:10.3f} {r['optim'] / gib:10.3f} "
              f"{go / gib:11.3f} {ratio:7.2f} {r['step_s']:8.2f} {t_ratio:7.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
