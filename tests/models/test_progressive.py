"""Progressive growing (model.progressive): the schedule, the grown nets' fade-in, resume mid-fade, refusals."""
import json

import pytest
import torch
import torch.nn.functional as F

import gandist
from gandist.config import ConfigError, load_config
from gandist.data.base import DataInfo
from gandist.models.base import BuildContext
from gandist.models.dcgan import build
from gandist.train.growth import GrowthSchedule
from gandist.train.loop import run_training

# 16 images a step: 3 steps at 8 px, 3 fading 16 in, 3 at 16, 3 fading 32 in, then 32 px to the end
TINY = ["model.arch=dcgan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=32",
        "model.progressive.enabled=true", "model.progressive.stable_kimg=0.048",
        "model.progressive.fade_kimg=0.048", "model.progressive.reset_optim=true",
        "model.progressive.levels={32: {lr_scale: 0.5}}", "train.batch_size=16", "optim.accumulation=2",
        "train.ema.decay=0.9", "train.ema.start_step=1", "telemetry.progress=false", "telemetry.sample_every=0",
        "telemetry.log_every=1", "checkpoint.keep_last=5", "penalties=[{kind: r1, weight: 1.0, every: 2}]"]


def test_schedule_follows_images_seen():
    cfg = load_config(None, TINY).model.progressive
    s = GrowthSchedule(cfg, 32)
    assert [(lv.resolution, lv.fade, lv.stable, lv.lr_scale) for lv in s.levels] == [
        (8, 0, 48, 1.0), (16, 48, 48, 1.0), (32, 48, 48, 0.5)]
    seen = [0, 47, 48, 60, 84, 96, 143, 144, 168, 192, 10 ** 6]
    assert [(s.at(n)[0].resolution, s.at(n)[1]) for n in seen] == [
        (8, 1.0), (8, 1.0), (16, 0.0), (16, 0.25), (16, 0.75), (16, 1.0), (16, 1.0), (32, 0.0), (32, 0.5),
        (32, 1.0), (32, 1.0)]


def test_reals_fade_between_the_two_resolutions():
    s = GrowthSchedule(load_config(None, TINY).model.progressive, 32)
    x = torch.randn(2, 1, 32, 32)
    at16 = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2)
    at8 = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4)
    assert torch.allclose(s.fade_reals(x, 16, 1.0), at16, atol=1e-6)
    assert torch.allclose(s.fade_reals(x, 16, 0.0), at8, atol=1e-6)
    assert torch.allclose(s.fade_reals(x, 16, 0.25), 0.75 * at8 + 0.25 * at16, atol=1e-6)
    assert torch.equal(s.fade_reals(x, 32, 1.0), x)


def _pair(grow: bool):
    cfg = load_config(None, TINY + [f"model.progressive.enabled={str(grow).lower()}"]).model
    torch.manual_seed(0)
    G, D = build(cfg, DataInfo((1, 32, 32), 10, (-1.0, 1.0)), BuildContext())
    return G.eval(), D.eval()


def test_grown_nets_at_the_last_level_are_the_plain_nets():
    """At full resolution and alpha 1 the growing nets compute what the fixed-size DCGAN does with the same weights."""
    (G, D), (G0, D0) = _pair(True), _pair(False)
    G0.load_state_dict({k: v for k, v in G.state_dict().items() if not k.startswith("to_rgbs")})
    D0.load_state_dict({k: v for k, v in D.state_dict().items() if not k.startswith("from_rgbs")})
    z, y, x = torch.randn(4, 16), torch.arange(4), torch.randn(4, 1, 32, 32)
    assert torch.allclose(G(z, y), G0(z, y), atol=1e-6)
    assert torch.allclose(D(x, y), D0(x, y), atol=1e-5)


def test_fade_in_blends_the_two_levels():
    G, D = _pair(True)
    z, y = torch.randn(4, 16), torch.arange(4)
    outs = {}
    for res, alpha in ((8, 1.0), (16, 1.0), (16, 0.0), (16, 0.3)):
        G.set_growth(res, alpha)
        outs[res, alpha] = G(z, y)
    assert outs[8, 1.0].shape == (4, 1, 32, 32)
    # 8 px upsampled: constant 4x4 blocks
    assert torch.allclose(outs[8, 1.0], F.interpolate(F.avg_pool2d(outs[8, 1.0], 4), scale_factor=4), atol=1e-7)
    assert torch.allclose(outs[16, 0.0], outs[8, 1.0], atol=1e-6)  # alpha 0: the previous level's image
    assert torch.allclose(outs[16, 0.3], 0.7 * outs[8, 1.0] + 0.3 * outs[16, 1.0], atol=1e-6)
    x = torch.randn(4, 1, 32, 32)
    D.set_growth(16, 0.0)
    d0 = D(x, y)
    D.set_growth(8, 1.0)
    assert torch.allclose(d0, D(x, y), atol=1e-5)  # D at alpha 0 is the previous level's D


def _weights(run_dir):
    run = gandist.load_run(str(run_dir))
    out = {f"G.{k}": v for k, v in run.G.state_dict().items()}
    out.update({f"D.{k}": v for k, v in run.D.state_dict().items()})
    out.update({f"EMA.{k}": v for k, v in run.G_ema.state_dict().items()})
    return out


def test_resume_mid_fade_is_bitwise_exact(tmp_path):
    """8 steps straight against 5 + resume + 3: step 5 is mid-fade of 16 px, the Adam reset at 32 px comes after."""
    straight = load_config(None, TINY + ["train.steps=11", "checkpoint.every=5"])
    run_training(straight, str(tmp_path / "straight"))
    run_training(load_config(None, TINY + ["train.steps=5", "checkpoint.every=5"]), str(tmp_path / "resumed"))
    assert run_training(straight, str(tmp_path / "resumed"))["steps"] == 11
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["resolution"], round(r["fade_alpha"], 3)) for r in records] == [
        (8, 1.0), (8, 1.0), (8, 1.0), (16, 0.0), (16, 0.333), (16, 0.667), (16, 1.0), (16, 1.0), (16, 1.0),
        (32, 0.0), (32, 0.333)]
    assert records[-1]["lr"]["G"] == pytest.approx(0.5 * straight.optim.g.lr)  # levels.32.lr_scale
    # the levels below 32 px trained their own heads: the 8 px RGB head moved away from its init
    init = _pair(True)[0].state_dict()
    assert not torch.allclose(a["G.to_rgbs.0.weight"], init["to_rgbs.0.weight"])


@pytest.mark.parametrize("bad,key", [(["model.progressive.start_resolution=4"], "start_resolution=4"),
                                     (["model.progressive.start_resolution=12"], "start_resolution=12"),
                                     (["model.progressive.start_resolution=32"], "data.resolution=32"),
                                     (["distributed.strategy=zero3"], "distributed.strategy=zero3"),
                                     (["distributed.strategy=zero1"], "reset_optim")])
def test_bad_progressive_configs_are_refused(bad, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + bad)
    line = str(err.value)
    assert "model.progressive" in line and key in line and len(line.splitlines()) == 1, line


def test_progressive_is_a_dcgan_key():
    with pytest.raises(ConfigError, match="progressive"):
        load_config(None, ["model.arch=resnet", "data.kind=digits", "model.progressive.enabled=true"])
