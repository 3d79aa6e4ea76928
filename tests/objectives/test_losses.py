"""Adversarial losses against values computed by hand on two real and two fake logits."""
import math

import pytest
import torch

from gandist.objectives.config import LossConfig
from gandist.objectives.losses import d_loss, g_loss, needs_real_in_g_phase

REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def mean(*values: float) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("kind, expected_d, expected_g", [
    # D: E softplus(-real) + E softplus(fake); G: E softplus(-fake)
    ("ns", mean(softplus(-2), softplus(1)) + mean(softplus(0.5), softplus(-3)), mean(softplus(-0.5), softplus(3))),
    # D: E relu(1 - real) + E relu(1 + fake) = mean(0, 2) + mean(1.5, 0); G: -E fake
    ("hinge", 1.75, 1.25),
    # D: E fake - E real = -1.25 - 0.5; G: -E fake
    ("wasserstein", -1.75, 1.25),
    # D: 0.5 (E (real-1)^2 + E fake^2) = 0.5 (2.5 + 4.625); G: 0.5 E (fake-1)^2 = 0.5 * (0.25 + 16) / 2
    ("ls", 3.5625, 4.0625),
])
def test_loss_matches_hand_computed_value(kind, expected_d, expected_g):
    cfg = LossConfig(kind=kind)
    assert d_loss(cfg, REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss(cfg, FAKE, REAL).item() == pytest.approx(expected_g, rel=1e-6)


# relativistic average: real_r = real - E fake = [3.25, 0.25], fake_r = fake - E real = [0, -3.5]
@pytest.mark.parametrize("base, expected_d, expected_g", [
    ("ns", mean(softplus(-3.25), softplus(-0.25)) + mean(softplus(0), softplus(-3.5)),
     mean(softplus(3.25), softplus(0.25)) + mean(softplus(0), softplus(3.5))),
    # D: mean(relu(-2.25), relu(0.75)) + mean(relu(1), relu(-2.5)); G: mean(4.25, 1.25) + mean(1, 4.5)
    ("hinge", 0.875, 5.5),
    # D: 0.5 (mean(2.25^2, 0.75^2) + mean(1, 2.5^2)); G: 0.5 (mean(4.25^2, 1.25^2) + mean(1, 4.5^2))
    ("ls", 3.21875, 10.21875),
])
def test_relativistic_average_loss_matches_hand_computed_value(base, expected_d, expected_g):
    cfg = LossConfig(kind="relativistic", relativistic_base=base)
    assert needs_real_in_g_phase(cfg)
    assert d_loss(cfg, REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss(cfg, FAKE, REAL).item() == pytest.approx(expected_g, rel=1e-6)


def test_relativistic_g_loss_does_not_train_d_through_real_logits():
    cfg = LossConfig(kind="relativistic")
    real = REAL.clone().requires_grad_(True)
    fake = FAKE.clone().requires_grad_(True)
    g_loss(cfg, fake, real).backward()
    assert real.grad is None and fake.grad is not None


def test_relativistic_g_loss_without_real_logits_is_refused():
    with pytest.raises(ValueError, match="relativistic"):
        g_loss(LossConfig(kind="relativistic"), FAKE)


def test_label_smoothing_lowers_the_real_target():
    cfg = LossConfig(kind="ns", label_smoothing=0.1)
    # BCE with target 0.9: 0.9 softplus(-r) + 0.1 softplus(r)
    real_term = mean(0.9 * softplus(-2) + 0.1 * softplus(2), 0.9 * softplus(1) + 0.1 * softplus(-1))
    expected = real_term + mean(softplus(0.5), softplus(-3))
    assert d_loss(cfg, REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_ns_loss_gradient_is_sigmoid_of_logit():
    # d/dr softplus(-r) = -sigmoid(-r): the non-saturating loss keeps gradients where D rejects fakes confidently
    fake = torch.tensor([-3.0], requires_grad=True)
    g_loss(LossConfig(kind="ns"), fake).backward()
    assert fake.grad.item() == pytest.approx(-1 / (1 + math.exp(-3.0)), rel=1e-6)


def test_every_configurable_loss_kind_has_a_registry_entry():
    from typing import get_args

    from gandist.registry import LOSSES, resolve

    kinds = set(get_args(LossConfig.model_fields["kind"].annotation))
    assert set(LOSSES) == kinds
    assert set(get_args(LossConfig.model_fields["relativistic_base"].annotation)) <= kinds
    assert [resolve(LOSSES, k, "loss.kind").needs_real_in_g for k in sorted(kinds)] == [
        False, False, False, True, False]  # hinge, ls, ns, relativistic, wasserstein
    with pytest.raises(KeyError, match="unknown loss.kind 'mse'; known: hinge, ls, ns, relativistic, wasserstein"):
        resolve(LOSSES, "mse", "loss.kind")
