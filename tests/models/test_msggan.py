"""MSG-GAN (model.arch=msggan): G's image pyramid, D on real and fake pyramids, training on digits, and the
refusals."""
import json

import pytest
import torch
import torch.nn.functional as F

from gandist.config import ConfigError, load_config
from gandist.data.base import DataInfo
from gandist.models.msggan import image_pyramid
from gandist.train.loop import run_training

import modelkit

TINY = ["model.arch=msggan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
        "train.batch_size=16", "telemetry.progress=false", "telemetry.sample_every=0", "telemetry.log_every=1",
        "train.ema.enabled=false"]


@pytest.mark.parametrize("res,classes", [(8, 10), (16, 0), (32, 10)])
def test_g_emits_every_scale_and_d_takes_real_and_fake_pyramids(res, classes):
    G, D = modelkit.build(["model.arch=msggan", "data.kind=digits", "model.ch=8", "model.z_dim=16"],
                          DataInfo((1, res, res), classes))
    G.eval()
    D.eval()  # spectral norm iterates in train mode: two calls would see two sigmas
    z, y = torch.randn(3, 16), (torch.arange(3) if classes else None)
    fakes = G(z, y, pyramid=True)
    sides = [4 * 2 ** k for k in range(len(fakes))]
    assert sides[-1] == res and [tuple(f.shape) for f in fakes] == [(3, 1, s, s) for s in sides]
    assert torch.equal(G(z, y), fakes[-1])  # the plain call (samples, EMA, eval) is the finest image
    assert D(fakes, y).shape == (3,)
    real = torch.rand(3, 1, res, res) * 2 - 1
    pyramid = image_pyramid(real, len(sides))
    assert [p.shape[-1] for p in pyramid] == sides
    assert torch.allclose(pyramid[-2], F.avg_pool2d(real, 2))
    assert torch.equal(D(real, y), D(pyramid, y))  # an image batch is judged through its pooled pyramid
    # every scale reaches D's logit: a change to the coarsest image alone moves it
    changed = [fakes[0] + 0.5, *fakes[1:]]
    assert not torch.allclose(D(changed, y), D(fakes, y))
    with pytest.raises(ValueError, match="scales"):
        D(fakes[1:], y)


def test_every_scale_of_g_gets_a_gradient_from_d():
    G, D = modelkit.build(["model.arch=msggan", "data.kind=digits", "model.ch=8", "model.z_dim=16"],
                          DataInfo((1, 16, 16), 0))
    D(G(torch.randn(4, 16), pyramid=True)).sum().backward()
    assert all(rgb.weight.grad is not None and rgb.weight.grad.abs().sum() > 0 for rgb in G.to_rgb)


def test_msggan_trains_on_digits_with_finite_losses(tmp_path):
    run_training(load_config(None, TINY + ["train.steps=3", "penalties=[{kind: r1, weight: 1.0, every: 2}]"]),
                 str(tmp_path / "run"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert all(torch.isfinite(torch.tensor(v)) for v in r["losses"].values()), r["losses"]
    assert "D/r1" in records[0]["losses"]  # a penalty on D's input sees the real image through its pyramid


@pytest.mark.parametrize("bad,keys", [
    (["data={kind: toy2d}"], ("model.arch=msggan", "data.kind=toy2d")),
    (["augment.diffaugment=color"], ("model.arch=msggan", "augment.diffaugment")),
    (["augment.pack=2"], ("model.arch=msggan", "augment.pack")),
    (["augment.instance_noise.std=0.1"], ("model.arch=msggan", "augment.instance_noise.std")),
    (["augment.ada={}"], ("model.arch=msggan", "augment.ada")),
])
def test_what_cannot_work_is_refused_in_one_line(bad, keys):
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + bad)
    line = str(err.value)
    assert len(line.splitlines()) == 1 and all(k in line for k in keys), line
