"""train.ema.rampup (stylegan2-ada's ema_rampup) and orthogonal regularization of D (BigGAN's D_ortho)."""
import math

import pytest
import torch
from torch import nn

from gandist.config import load_config
from gandist.objectives.config import OrthoConfig
from gandist.objectives.penalties import PenaltyContext, build_penalties
from gandist.train.ema import ramped_decay
from gandist.train.loop import Trainer

TINY = ["model.arch=dcgan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
        "train.batch_size=16", "telemetry.progress=false", "telemetry.sample_every=0"]


def test_rampup_caps_the_half_life_at_rampup_times_images_seen():
    # stylegan2-ada: ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup); beta = 0.5 ** (batch / ema_nimg)
    batch, decay, rampup = 64, 0.999, 0.05
    half_life = batch * math.log(0.5) / math.log(decay)  # 44329 images
    assert ramped_decay(decay, batch, 0, rampup) == 0.0  # the first step copies G
    assert ramped_decay(decay, batch, 6400, rampup) == pytest.approx(0.5 ** (64 / 320))
    assert ramped_decay(decay, batch, int(2 * half_life / rampup), rampup) == pytest.approx(decay)
    assert ramped_decay(decay, batch, 10 ** 9, None) == decay  # off: the configured decay


def test_rampup_makes_the_early_ema_follow_g(tmp_path):
    # decay 0.999 without rampup leaves the EMA near G's initial weights; with rampup 0.05 after 3 steps of 16
    # images the half-life is 2.4 images, so the EMA is G's last weights up to 0.5 ** (16 / 2.4) = 1 %
    def distance(extra):
        cfg = load_config(None, TINY + ["train.steps=3", "train.ema.decay=0.999", *extra])
        trainer = Trainer(cfg, str(tmp_path / str(len(extra))))
        try:
            init = [p.detach().clone() for p in trainer.G_ema.parameters()]
            for _ in range(3):
                trainer.train_step()
            G = trainer.strategy.module("G")
            moved = sum(float((p.detach() - q).norm()) for p, q in zip(G.parameters(), init))
            lag = sum(float((p.detach() - q).norm()) for p, q in zip(G.parameters(), trainer.G_ema.parameters()))
            return lag / moved
        finally:
            trainer.close()

    assert distance([]) > 0.9
    assert distance(["train.ema.rampup=0.05"]) < 0.05


def test_ortho_of_d_regularizes_d_in_its_phase(tmp_path):
    (ortho,) = build_penalties([OrthoConfig(weight=0.5, net="d")])
    assert ortho.net == "D"
    D = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        D.weight.copy_(torch.tensor([[1.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]))
    # W W^T off the diagonal: (1, 0) and (0, 1) entries are 1 -> beta/2 * 2 = 0.5
    assert ortho.loss(PenaltyContext(step=0, d_forward=None, D=D)).item() == pytest.approx(0.5)
    cfg = load_config(None, TINY + ["penalties=[{kind: ortho, weight: 1.0e-3, net: d}]"])
    trainer = Trainer(cfg, str(tmp_path / "run"))
    try:
        sig = trainer.train_step()
        assert sig.losses["D/ortho"] > 0 and "G/ortho" not in sig.losses
    finally:
        trainer.close()


def test_ortho_of_d_is_refused_under_zero3():
    from gandist.errors import ConfigError

    with pytest.raises(ConfigError, match="ortho with net: d .*strategy=zero3"):
        load_config(None, TINY + ["penalties=[{kind: ortho, weight: 1.0, net: d}]", "distributed.strategy=zero3"])
