"""ADA's pipeline and controller (gandist/objectives/ada.py) on their own."""
import math
from types import SimpleNamespace

import pytest
import torch

from gandist.objectives.ada import AdaController, ada_augment
from gandist.randomness import GlobalRandom

GROUPS = ["blit", "geom", "color"]


def _rand(offset=0, global_n=8, tag="D0"):
    return GlobalRandom(1234, 3, tag, offset, global_n)


def _images(n=8, c=3, side=16):
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_p_zero_is_the_identity_and_p_one_changes_every_image():
    x = _images()
    assert torch.equal(ada_augment(x, 0.0, GROUPS, _rand()), x)
    out = ada_augment(x, 1.0, GROUPS, _rand())
    assert ((out - x).flatten(1).abs().amax(1) > 1e-3).all()


def test_the_augmentation_of_a_sample_does_not_depend_on_the_world_size():
    x = _images()
    whole = ada_augment(x, 0.5, GROUPS, _rand())
    halves = torch.cat([ada_augment(x[:4], 0.5, GROUPS, _rand(0)), ada_augment(x[4:], 0.5, GROUPS, _rand(4))])
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=1e-5)


def test_the_pipeline_is_differentiable_in_its_input():
    x = _images(c=1).requires_grad_(True)
    ada_augment(x, 0.8, GROUPS, _rand()).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_applies_with_probability_p(group):
    # 400 samples at p = 0.3: the share of changed samples is 1 - prod(1 - p_i) over the group's transforms
    n, p = 400, 0.3
    x = _images(n=n, side=8)
    changed = (ada_augment(x, p, [group], _rand(global_n=n)) - x).flatten(1).abs().amax(1) > 1e-6
    # blit: an x-flip bit of 0 (1/2), a quarter turn of 0 (1/4) and a shift that rounds to 0 pixels (1/2 at 8 px)
    # leave a sample as it is; geom: the two rotations count as one of probability p; color: luma flip bit 0 (1/2)
    expected = {"blit": 1 - (1 - p / 2) * (1 - 3 * p / 4) * (1 - p / 2),
                "geom": 1 - (1 - p) ** 4, "color": 1 - (1 - p) ** 4 * (1 - p / 2)}[group]
    assert abs(float(changed.float().mean()) - expected) < 0.06, (float(changed.float().mean()), expected)


def _controller(target=0.6, interval=2, kimg=0.1, p=0.0, batch=16):
    cfg = SimpleNamespace(p=p, target=target, interval=interval, kimg=kimg, pipeline="blit,geom,color")
    return AdaController(cfg, batch)


def test_the_controller_raises_p_when_d_overfits_and_lowers_it_when_not():
    ctrl = _controller()
    step = 16 * 2 / (0.1 * 1000)
    for _ in range(4):  # D sure of every real image: r_t = 1 > 0.6
        ctrl.observe(torch.ones(16))
        ctrl.end_step(lambda t: t)
    assert ctrl.rt == 1.0 and math.isclose(ctrl.p, 2 * step)
    for _ in range(2):  # D wrong on 3/4 of the reals: r_t = -0.5 < 0.6
        ctrl.observe(torch.tensor([1.0] * 4 + [-1.0] * 12))
        ctrl.end_step(lambda t: t)
    assert ctrl.rt == -0.5 and math.isclose(ctrl.p, step)


def test_a_fixed_p_never_moves_and_p_stays_in_0_1():
    fixed = _controller(target=None, p=0.3)
    for _ in range(2):
        fixed.observe(torch.ones(16))
        fixed.end_step(lambda t: t)
    assert fixed.p == 0.3 and fixed.rt == 1.0  # r_t is measured all the same
    fast = _controller(kimg=0.001)
    for _ in range(4):
        fast.observe(torch.ones(16))
        fast.end_step(lambda t: t)
    assert fast.p == 1.0
