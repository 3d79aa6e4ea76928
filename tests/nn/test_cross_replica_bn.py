"""Cross-replica batch norm on 2 and 3 gloo processes equals plain BatchNorm on the concatenated batch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distkit import spawn

pytestmark = pytest.mark.slow


def _global_batch(sizes: list[int], dims: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    spatial = (5, 3) if dims == 4 else ((7,) if dims == 3 else ())
    xs = [torch.randn(n, 4, *spatial, generator=gen) * 3 + 2 for n in sizes]  # mean far from 0: tests cancellation
    gs = [torch.randn(n, 4, *spatial, generator=gen) for n in sizes]  # upstream gradients dL/dy
    return xs, gs


def _reference(sizes, dims, steps):
    """Plain BatchNorm over the concatenated batch: outputs, input grads, weight/bias grads, running stats."""
    bn = nn.BatchNorm2d(4) if dims == 4 else nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 4))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 4))
    out = {}
    for step in range(steps):
        xs, gs = _global_batch(sizes, dims, seed=step)
        x = torch.cat(xs).requires_grad_(True)
        bn.zero_grad()
        y = bn(x)
        (y * torch.cat(gs)).sum().backward()
        out = {"y": y.detach(), "dx": x.grad, "dw": bn.weight.grad.clone(), "db": bn.bias.grad.clone()}
    out.update(running_mean=bn.running_mean.clone(), running_var=bn.running_var.clone())
    return out


def _worker(rank, world, sizes, dims, steps, path):
    import torch.distributed as dist

    from gandist.nn.cross_replica_bn import CrossReplicaBatchNorm

    dist.init_process_group("gloo")
    bn = CrossReplicaBatchNorm(4, dist.group.WORLD)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 4))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 4))
    for step in range(steps):
        xs, gs = _global_batch(sizes, dims, seed=step)
        x = xs[rank].clone().requires_grad_(True)
        bn.zero_grad()
        y = bn(x)
        (y * gs[rank]).sum().backward()
        dw, db = bn.weight.grad.clone(), bn.bias.grad.clone()
        dist.all_reduce(dw)  # what the strategy's gradient all-reduce does (sum of per-rank losses here)
        dist.all_reduce(db)
    torch.save({"y": y.detach(), "dx": x.grad, "dw": dw, "db": db, "running_mean": bn.running_mean,
                "running_var": bn.running_var}, f"{path}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("sizes,dims", [
    ([3, 3], 4),        # 2 ranks, equal, images
    ([2, 5, 1], 4),     # 3 ranks, unequal, one rank with a single sample
    ([4, 0, 3], 2),     # 3 ranks, one rank without samples, [N, C] features
    ([1, 6], 3),        # 2 ranks, unequal, [N, C, L]
])
def test_cross_replica_bn_matches_batchnorm_on_concatenated_batch(tmp_path, sizes, dims):
    steps = 3
    spawn(_worker, len(sizes), sizes, dims, steps, str(tmp_path))
    ref = _reference(sizes, dims, steps)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(len(sizes))]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), ref["y"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), ref["dx"], rtol=1e-5, atol=1e-5)
    for p in parts:  # every rank agrees, and equals the reference
        for key in ("dw", "db", "running_mean", "running_var"):
            torch.testing.assert_close(p[key], ref[key], rtol=1e-5, atol=1e-5)
    assert float(ref["running_var"].min()) > 1.0  # the data has variance ~9: a wrong (biased/local) var would show


def test_batch_norm_factory_returns_plain_bn_without_group():
    from gandist.nn.cross_replica_bn import CrossReplicaBatchNorm, batch_norm

    assert type(batch_norm(8)) is nn.BatchNorm2d
    assert type(batch_norm(8, dims=1)) is nn.BatchNorm1d
    assert isinstance(batch_norm(8, process_group=object()), CrossReplicaBatchNorm)


def _deepcopy_worker(rank, world):
    import copy

    import torch.distributed as dist

    from gandist.nn.cross_replica_bn import CrossReplicaBatchNorm

    dist.init_process_group("gloo")
    bn = CrossReplicaBatchNorm(3, dist.group.WORLD)
    twin = copy.deepcopy(nn.Sequential(bn))[0]  # what the EMA copy of G does
    assert twin.process_group is bn.process_group and twin.weight is not bn.weight
    twin(torch.randn(2 + rank, 3))  # still reduces over the shared group
    assert int(twin.num_batches_tracked) == 1 and int(bn.num_batches_tracked) == 0
    dist.destroy_process_group()


def test_cross_replica_bn_deep_copies_sharing_its_group():
    spawn(_deepcopy_worker, 2)
