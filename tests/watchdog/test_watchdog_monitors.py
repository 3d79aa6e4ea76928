"""Monitors on small modules: sigma values match torch's SVD, SN layers cost no extra work, EMA distance is exact."""
import copy

import pytest
import torch
from torch import nn

from gandist.nn.spectral_norm import SNLinear, SNConv2d
from gandist.watchdog.monitors import SigmaMonitor, ema_distance, top_singular_value, weight_layers


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm1d(16)  # 1-D weight: not a weight layer
        self.sn = SNLinear(16, 4)


def true_sigma(weight):
    return float(torch.linalg.matrix_norm(weight.detach().reshape(weight.shape[0], -1), ord=2))


def test_weight_layers_are_matrix_shaped_only():
    assert sorted(weight_layers(Tiny())) == ["conv", "fc", "sn"]


def test_power_iteration_converges_to_the_top_singular_value():
    torch.manual_seed(0)
    w = torch.randn(64, 3, 3, 3)
    u = torch.nn.functional.normalize(torch.randn(64), dim=0)
    for _ in range(30):
        sigma, u = top_singular_value(w, u)
    assert sigma == pytest.approx(true_sigma(w), rel=1e-3)


def test_plain_layers_are_measured_every_k_steps_and_warm_started():
    torch.manual_seed(0)
    net = Tiny()
    mon = SigmaMonitor(every=5)
    for step in range(200):
        values = mon.measure("G", net, step)
    assert set(values) == {"G/fc", "G/conv", "G/sn"}
    assert values["G/fc"] == pytest.approx(true_sigma(net.fc.weight), rel=1e-3)  # 40 warm steps converge
    assert values["G/conv"] == pytest.approx(true_sigma(net.conv.weight), rel=1e-3)
    with torch.no_grad():
        net.fc.weight.mul_(3.0)
    assert mon.measure("G", net, 201)["G/fc"] == pytest.approx(values["G/fc"])  # not a check step: last value
    assert mon.measure("G", net, 205)["G/fc"] == pytest.approx(3 * values["G/fc"], rel=1e-3)


def test_sn_layers_report_their_own_sigma_buffer_without_power_iteration():
    torch.manual_seed(0)
    layer = SNConv2d(3, 8, 3)
    net = nn.Sequential(layer)
    for _ in range(50):  # training forwards run SN's own power iteration
        net(torch.randn(2, 3, 8, 8))
    mon = SigmaMonitor(every=1)
    values = mon.measure("D", net, 0)
    assert values == {"D/0": float(layer.sigma)}
    assert values["D/0"] == pytest.approx(true_sigma(layer.weight), rel=1e-3)
    assert mon._u == {}  # no vector of its own: no extra cost


def test_ema_distance_is_relative_l2_distance():
    torch.manual_seed(0)
    G = nn.Linear(4, 4)
    ema = copy.deepcopy(G)
    assert ema_distance(G, ema) == 0.0
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.1)
    norm = torch.cat([p.detach().flatten() for p in G.parameters()]).norm()
    assert ema_distance(G, ema) == pytest.approx(0.1 * 20 ** 0.5 / float(norm), rel=1e-5)
    assert ema_distance(G, nn.Linear(3, 3)) is None  # nothing matches
