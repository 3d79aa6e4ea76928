"""ddp and zero1/2/3 through the Strategy API on 2 gloo processes, against SingleStrategy on the whole batch.

A hand-written GAN loop (D phase, G phase, EMA through `gathered`) with spectral norm, cross-replica BN,
gradient accumulation and clipping; every strategy must give single's weights, EMA, grad norms and buffers, keep D
free of gradients during the G phase (DeepSpeed#399), and load another strategy's checkpoint mid-run.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distkit import spawn
from closekit import compare_state, matches

pytestmark = pytest.mark.slow

BATCH, STEPS, RESUME_AT = 8, 3, 2
STRATEGIES = ["ddp", "zero1", "zero2", "zero3"]


def make_nets(group=None):
    """G with SN and (cross-replica) BN; D with SN. 64x64 weights exceed ZeRO-3's persistence threshold."""
    from gandist.nn.cross_replica_bn import batch_norm
    from gandist.nn.spectral_norm import SNLinear

    torch.manual_seed(0)
    # no bias before BN: its true gradient is 0, so Adam would turn round-off noise into full-size steps
    G = nn.Sequential(SNLinear(8, 64, bias=False), batch_norm(64, group, dims=1), nn.ReLU(), SNLinear(64, 64), nn.ReLU(),
                      SNLinear(64, 2))
    D = nn.Sequential(SNLinear(2, 64), nn.LeakyReLU(0.2), SNLinear(64, 64), nn.LeakyReLU(0.2), SNLinear(64, 1))
    return G, D


def make_strategy(name: str, G, D):
    from gandist.config import load_config
    from gandist.strategies import build_strategy
    from gandist.strategies.base import OptimSetup

    cfg = load_config(None, [f"distributed.strategy={name}", f"train.batch_size={BATCH}", "train.device=cpu"])
    s = build_strategy(cfg)
    optim = {"G": OptimSetup(2e-3, (0.5, 0.99), 1e-8, 0.0), "D": OptimSetup(4e-3, (0.5, 0.99), 1e-8, 0.0)}
    s.setup(G, D, optim, accumulation=2, grad_clip=0.5, amp="off")
    return s


def train(s, ema, steps: range, log: dict) -> None:
    """The loop's phase structure on a toy problem; the global batch of step t is fixed by t alone."""
    micro = BATCH // s.world_size // 2
    for t in steps:
        gen = torch.Generator().manual_seed(1000 + t)
        real = torch.randn(BATCH, 2, generator=gen) * 0.5 + 1.0
        z_d, z_g = torch.randn(BATCH, 8, generator=gen), torch.randn(BATCH, 8, generator=gen)
        # micro-batch-major layout: global micro-batch i is the same samples at every world size, so batch
        # statistics (cross-replica BN) see the same groups as on one process
        mine = torch.cat([torch.arange(i * BATCH // 2 + s.rank * micro, i * BATCH // 2 + (s.rank + 1) * micro)
                          for i in range(2)])
        real, z_d, z_g = real[mine], z_d[mine], z_g[mine]
        with s.phase("D"):
            for i in range(2):
                part = slice(i * micro, (i + 1) * micro)
                with torch.no_grad():
                    fake = s.net("G")(z_d[part])
                loss = F.softplus(-s.net("D")(real[part])).mean() + F.softplus(s.net("D")(fake)).mean()
                s.backward(loss, "D", last_micro=i == 1)
        log.setdefault("D", []).append(float(s.step("D").grad_norm))  # a device tensor until the host asks
        with s.phase("G"):
            for i in range(2):
                part = slice(i * micro, (i + 1) * micro)
                loss = F.softplus(-s.net("D")(s.net("G")(z_g[part]))).mean()
                s.backward(loss, "G", last_micro=i == 1)
                # DeepSpeed#399: G's backward must leave nothing in D (frozen, no grads)
                assert all(p.grad is None for p in s.module("D").parameters())
        log.setdefault("G", []).append(float(s.step("G").grad_norm))  # a device tensor until the host asks
        with s.gathered("G") as G_full, torch.no_grad():
            for pe, p in zip(ema.parameters(), G_full.parameters()):
                pe.lerp_(p, 0.5)


def run_reference() -> dict:
    """SingleStrategy, whole batch, no interruption."""
    G, D = make_nets()
    ema = copy.deepcopy(G)
    s = make_strategy("single", G, D)
    log: dict = {}
    train(s, ema, range(STEPS), log)
    shared, _ = s.state_dict()
    return {"G": shared["G"], "D": shared["D"], "ema": ema.state_dict(), "log": log}


def _worker(rank, world, path):
    import torch.distributed as dist

    dist.init_process_group("gloo")  # before the nets: their cross-replica BN takes the group (strategies reuse it)
    results = {}
    for i, name in enumerate(STRATEGIES):
        G, D = make_nets(dist.group.WORLD)
        ema = copy.deepcopy(G)  # before setup: ZeRO-3 partitions G's parameters in place
        s = make_strategy(name, G, D)
        log: dict = {}
        train(s, ema, range(RESUME_AT), log)
        with s.gathered("G") as G_full:  # full weights under every stage
            shapes = {n: tuple(p.shape) for n, p in G_full.named_parameters()}
        shared, per_rank = s.state_dict()
        # resume under the next strategy in the cycle: portable weights + Adam moments by name
        G2, D2 = make_nets(dist.group.WORLD)
        ema2 = copy.deepcopy(G2)
        ema2.load_state_dict(ema.state_dict())
        s2 = make_strategy(STRATEGIES[(i + 1) % len(STRATEGIES)], G2, D2)
        s2.load_state_dict(shared, per_rank)
        train(s2, ema2, range(RESUME_AT, STEPS), log)
        final, _ = s2.state_dict()
        buffers = {k: v for k, v in final["G"].items() if k.endswith(("u", "v", "sigma", "running_mean", "running_var"))}
        results[name] = {"G": final["G"], "D": final["D"], "ema": ema2.state_dict(), "log": log, "shapes": shapes,
                         "buffers": buffers, "local_buffers": {k: v.clone() for k, v in s2.module("G").named_buffers()}}
    torch.save(results, f"{path}/{rank}.pt")


def test_every_strategy_matches_single_and_resumes_under_another(tmp_path):
    spawn(_worker, 2, str(tmp_path))
    ref = run_reference()
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    full_shapes = {n: tuple(t.shape) for n, t in ref["G"].items() if n in ranks[0]["ddp"]["shapes"]}
    for name in STRATEGIES:
        got = ranks[0][name]
        for net in ("G", "D", "ema"):
            # model-wide and elementwise rules of tests/closekit.py: stable across CPU vector widths
            report = compare_state({k: got[net][k] for k in ref[net]}, ref[net])
            assert matches(report), (name, net, report)
        for net in ("G", "D"):  # grad norms before clipping, every step (clipping at 0.5 is active)
            assert got["log"][net] == pytest.approx(ref["log"][net], rel=1e-5), (name, net)
        assert max(ref["log"]["D"]) > 0.5
        assert got["shapes"] == full_shapes, name
        # SN vectors and BN running stats: the same on both ranks (engines broadcast only parameters)
        for key, value in ranks[0][name]["local_buffers"].items():
            torch.testing.assert_close(ranks[1][name]["local_buffers"][key], value, rtol=0, atol=0)
