"""A parameter frozen before setup (requires_grad False) stays frozen and unchanged under single and ddp.

phase() unfreezes only the parameters that trained at setup: re-enabling every parameter after a phase (as
single once did) made a frozen layer train from the second phase on. Also: the capabilities the loop and the
config ask are class attributes, readable before any strategy (or process group) exists.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distkit import spawn

BATCH, STEPS = 8, 3
FROZEN = {"G": "0.weight", "D": "0.bias"}  # one frozen tensor per net, in the first layer of each


def make_nets():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    for net, module in (("G", G), ("D", D)):
        module.get_parameter(FROZEN[net]).requires_grad_(False)
    return G, D


def make_strategy(name: str, G, D):
    from gandist.config import load_config
    from gandist.strategies import build_strategy
    from gandist.strategies.base import OptimSetup

    cfg = load_config(None, [f"distributed.strategy={name}", f"train.batch_size={BATCH}", "train.device=cpu"])
    s = build_strategy(cfg)
    optim = {n: OptimSetup(1e-2, (0.5, 0.99), 1e-8, 0.0) for n in ("G", "D")}
    s.setup(G, D, optim, accumulation=1, grad_clip=0.0, amp="off")
    return s


def train(s, steps: int) -> None:
    """D phase then G phase per step; this rank's slice of a batch fixed by the step."""
    micro = BATCH // s.world_size
    mine = slice(s.rank * micro, (s.rank + 1) * micro)
    for t in range(steps):
        gen = torch.Generator().manual_seed(t)
        real, z = torch.randn(BATCH, 2, generator=gen)[mine] + 1.0, torch.randn(BATCH, 4, generator=gen)[mine]
        with s.phase("D"):
            assert not s.module("D").get_parameter(FROZEN["D"]).requires_grad
            with torch.no_grad():
                fake = s.net("G")(z)
            s.backward(F.softplus(-s.net("D")(real)).mean() + F.softplus(s.net("D")(fake)).mean(), "D")
        s.step("D")
        with s.phase("G"):
            assert not s.module("G").get_parameter(FROZEN["G"]).requires_grad
            s.backward(F.softplus(-s.net("D")(s.net("G")(z))).mean(), "G")
        s.step("G")


def check_frozen_stay_frozen(name: str) -> dict:
    """Train, compare each parameter with its initial value, then resume from the state_dict; returns the weights."""
    G, D = make_nets()
    before = {n: {k: v.detach().clone() for k, v in m.named_parameters()} for n, m in (("G", G), ("D", D))}
    s = make_strategy(name, G, D)
    train(s, STEPS)
    for net in ("G", "D"):
        for key, p in s.module(net).named_parameters():
            if key == FROZEN[net]:
                assert not p.requires_grad, (name, net, key)
                assert p.grad is None, (name, net, key)
                torch.testing.assert_close(p.detach(), before[net][key], rtol=0, atol=0)
            else:
                assert p.requires_grad, (name, net, key)
                assert (p.detach() - before[net][key]).abs().max() > 1e-4, (name, net, key)  # it trained
    shared, per_rank = s.state_dict()
    G2, D2 = make_nets()
    s2 = make_strategy(name, G2, D2)
    s2.load_state_dict(shared, per_rank)  # the frozen tensor has no Adam state: loading must not ask for it
    train(s2, 1)
    torch.testing.assert_close(s2.module("G").get_parameter(FROZEN["G"]).detach(), before["G"][FROZEN["G"]],
                               rtol=0, atol=0)
    return {n: {k: v.detach().clone() for k, v in s.module(n).named_parameters()} for n in ("G", "D")}


def test_a_frozen_parameter_stays_frozen_under_single():
    check_frozen_stay_frozen("single")


def _ddp_worker(rank, world, path):
    weights = check_frozen_stay_frozen("ddp")
    torch.save(weights, f"{path}/{rank}.pt")


@pytest.mark.slow
def test_a_frozen_parameter_stays_frozen_under_ddp_and_ddp_matches_single(tmp_path):
    spawn(_ddp_worker, 2, str(tmp_path))
    ref = check_frozen_stay_frozen("single")
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        for net in ("G", "D"):
            for key, value in ref[net].items():
                torch.testing.assert_close(got[net][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, partitions, double_backward, master_copy", [
    ("single", False, True, False), ("ddp", False, True, False), ("zero1", False, True, True),
    ("zero2", False, True, True), ("zero3", True, False, True)])
def test_capabilities_are_readable_from_the_class(name, partitions, double_backward, master_copy):
    from gandist.strategies import strategy_class

    cls = strategy_class(name)
    assert (cls.partitions_params, cls.supports_double_backward, cls.keeps_master_weights) == (
        partitions, double_backward, master_copy)
    if name.startswith("zero"):
        assert cls.stage == int(name[-1])
