"""The Watchdog the loop drives: injection, verdicts, rollback actions, healthy marks, giving up, state."""
import math

import pytest
import torch
from torch import nn

from gandist.config import load_config
from gandist.nn.spectral_norm import SNLinear
from gandist.train.signals import Signals
from gandist.watchdog import VERDICTS, Action, Mitigation, Watchdog, WatchdogGaveUp


class Nets:
    """Just enough of a Strategy and an lr owner for before_step: module() on real modules, override()."""

    def __init__(self):
        torch.manual_seed(0)
        self.G = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.D = nn.Sequential(SNLinear(2, 16), nn.ReLU(), SNLinear(16, 1))
        self.lr_scale = {"G": 1.0, "D": 1.0}

    def module(self, name):
        return {"G": self.G, "D": self.D}[name]

    def override(self, scale):
        self.lr_scale = {"G": scale, "D": scale}


def make(*overrides):
    cfg = load_config(None, ["watchdog.warmup=0", *overrides]).watchdog
    return Watchdog(cfg, rank=0, world_size=1)


def healthy_signals(step, loss=1.0):
    return Signals(step=step, losses={"G": loss, "D": 1.3}, grad_norm={"G": 1.0, "D": 0.5}, d_real=0.4, d_fake=-0.2)


def drive(wd, nets, step, signals=None):
    """One loop iteration on one rank: observe, agree (one rank: own verdict), resolve."""
    sig = signals or healthy_signals(step)
    local = wd.observe(sig, nets.G, nets.D, None)
    return local, wd.resolve(local, sig), sig


def test_observe_fills_sigma_of_every_weight_layer_and_ema_distance():
    nets = Nets()
    wd = make()
    ema = Nets().G
    with torch.no_grad():
        ema[0].weight.add_(0.01)
    sig = healthy_signals(10)
    assert wd.observe(sig, nets.G, nets.D, ema) == 0
    assert set(sig.sigma) == {"G/0", "G/2", "D/0", "D/2"}
    assert sig.sigma["G/0"] > 0 and sig.sigma["D/0"] == float(nets.D[0].sigma)
    assert 0 < sig.ema_distance < 0.1


def test_nan_loss_gives_a_rollback_action_with_the_configured_mitigation():
    nets = Nets()
    wd = make("watchdog.mitigation.lr_scale=0.25", "watchdog.mitigation.skip_batches=3",
              "watchdog.mitigation.r1_scale=2")
    for step in range(1, 20):
        assert drive(wd, nets, step)[1] is None
    sig = healthy_signals(20, loss=float("nan"))
    local, action, sig = drive(wd, nets, 20, sig)
    assert VERDICTS[local] == "diverged" and sig.verdict == "diverged"
    assert isinstance(action, Action) and "non-finite" in action.reason and "loss/G" in action.reason
    assert action.mitigation == Mitigation(lr_scale=0.25, skip_batches=3, reseed=True, r1_scale=2.0)
    assert action.details["step"] == 20 and math.isnan(action.details["loss/G"])


def test_warn_is_recorded_but_does_not_act():
    wd = make()
    sig = healthy_signals(1)
    sig.verdict = "ok"
    assert wd.resolve(1, sig) is None and sig.verdict == "warn"
    assert wd.bad_steps == [1]


def test_another_ranks_divergence_is_acted_on_here_too():
    nets = Nets()
    wd = make()
    sig = healthy_signals(5)
    assert wd.observe(sig, nets.G, nets.D, None) == 0
    action = wd.resolve(2, sig)  # the all-reduced max says another rank diverged
    assert action is not None and action.reason == "diverged on another rank"


def test_healthy_needs_the_whole_window_ok():
    nets = Nets()
    wd = make("watchdog.healthy_window=10")
    for step in range(1, 31):
        if step == 15:
            wd.resolve(1, healthy_signals(step))  # a warn at step 15
            continue
        drive(wd, nets, step)
    assert not wd.healthy(9)  # fewer than 10 steps observed
    assert wd.healthy(10) and wd.healthy(14)
    assert not wd.healthy(15) and not wd.healthy(24)
    assert wd.healthy(25) and wd.healthy(30)


def test_after_rollback_forgets_the_abandoned_future():
    nets = Nets()
    wd = make("watchdog.healthy_window=10")
    for step in range(1, 21):
        drive(wd, nets, step)
    _, action, _ = drive(wd, nets, 21, healthy_signals(21, loss=float("inf")))
    assert action is not None
    wd.after_rollback(20)
    assert wd.bad_steps == []
    for step in range(21, 31):  # the replay is healthy
        drive(wd, nets, step)
    assert wd.healthy(30)


def test_gives_up_after_max_rollbacks_within_the_window_with_a_report():
    nets = Nets()
    wd = make("watchdog.max_rollbacks=2", "watchdog.rollback_window=100")
    for attempt in range(2):
        _, action, _ = drive(wd, nets, 50, healthy_signals(50, loss=float("nan")))
        assert action is not None
        wd.after_rollback(40)
    with pytest.raises(WatchdogGaveUp) as err:
        drive(wd, nets, 50, healthy_signals(50, loss=float("nan")))
    report = err.value.report
    assert "2 rollback(s)" in report and "rollback 1: step 50" in report and "rollback 2: step 50" in report
    assert "Gave up at step 50" in report and "watchdog.max_rollbacks=2" in report


def test_rollbacks_outside_the_window_do_not_count():
    nets = Nets()
    wd = make("watchdog.max_rollbacks=1", "watchdog.rollback_window=100")
    _, action, _ = drive(wd, nets, 50, healthy_signals(50, loss=float("nan")))
    wd.after_rollback(40)
    _, action, _ = drive(wd, nets, 151, healthy_signals(151, loss=float("nan")))
    assert action is not None  # the first rollback is 101 steps back


def test_inject_lr_spike_once_even_when_the_step_is_replayed():
    nets = Nets()
    wd = make("watchdog.inject.kind=lr_spike", "watchdog.inject.step=7", "watchdog.inject.factor=50")
    wd.before_step(6, nets, nets)
    assert nets.lr_scale == {"G": 1.0, "D": 1.0}
    wd.before_step(7, nets, nets)
    assert nets.lr_scale == {"G": 50.0, "D": 50.0}
    nets.lr_scale = {"G": 0.5, "D": 0.5}  # the loop's mitigation after a rollback
    wd.before_step(7, nets, nets)
    assert nets.lr_scale == {"G": 0.5, "D": 0.5}


def test_inject_nan_writes_one_nan_and_repeat_reinjects():
    nets = Nets()
    wd = make("watchdog.inject.kind=nan", "watchdog.inject.step=3", "watchdog.inject.repeat=true")
    wd.before_step(3, nets, nets)
    weights = torch.cat([p.detach().flatten() for p in nets.D.parameters()])
    assert int(torch.isnan(weights).sum()) == 1
    with torch.no_grad():
        for p in nets.D.parameters():
            p.nan_to_num_(0.0)
    wd.before_step(3, nets, nets)  # repeat: a persistent fault
    assert int(torch.isnan(torch.cat([p.detach().flatten() for p in nets.D.parameters()])).sum()) == 1


def test_inject_d_noise_adds_noise_of_the_given_std_to_d_only():
    nets = Nets()
    before_D = [p.detach().clone() for p in nets.D.parameters()]
    before_G = [p.detach().clone() for p in nets.G.parameters()]
    wd = make("watchdog.inject.kind=d_noise", "watchdog.inject.step=0", "watchdog.inject.factor=0.5")
    wd.before_step(0, nets, nets)
    noise = torch.cat([(p.detach() - b).flatten() for p, b in zip(nets.D.parameters(), before_D)])
    assert float(noise.std()) == pytest.approx(0.5, rel=0.25)  # 65 values
    assert all(torch.equal(p, b) for p, b in zip(nets.G.parameters(), before_G))


def test_state_dict_round_trip_and_merge_keeps_history():
    nets = Nets()
    wd = make("watchdog.inject.kind=nan", "watchdog.inject.step=2")
    for step in range(1, 5):
        drive(wd, nets, step)
    wd.before_step(2, nets, nets)
    _, action, _ = drive(wd, nets, 5, healthy_signals(5, loss=float("nan")))
    state = wd.state_dict()
    fresh = make("watchdog.inject.kind=nan", "watchdog.inject.step=2")
    fresh.load_state_dict(state)  # a resumed process
    assert fresh.rollbacks == wd.rollbacks and fresh.injected and fresh.observed_from == 1
    assert fresh.bad_steps == [5]
    older = make().state_dict()  # a checkpoint from before the rollback: history must not shrink
    wd.load_state_dict(older)
    assert len(wd.rollbacks) == 1 and wd.injected
