"""ACGAN (model.d_conditioning=auxiliary): a class head on the DCGAN, ResNet and BigGAN discriminators, its
cross-entropy in D's and G's losses, and the refusals of config validation."""
import pytest
import torch
import torch.nn.functional as F

import gandist
from gandist.config import ConfigError, load_config
from gandist.data.base import DataInfo
from gandist.models.base import BuildContext
from gandist.registry import ARCHS, resolve
from gandist.train.loop import run_training

TINY = ["model.arch=dcgan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
        "train.batch_size=32", "telemetry.progress=false", "telemetry.sample_every=0", "telemetry.log_every=1",
        "model.d_conditioning=auxiliary", "train.ema.enabled=false"]
ARCH_SETS = {"dcgan": ["model.ch=8"], "resnet": ["model.ch=8"],
             "biggan": ["model.ch=4", "model.d_ch=4", "model.attention=[]", "data.resolution=32"]}


@pytest.mark.parametrize("arch", list(ARCH_SETS))
def test_auxiliary_d_has_a_class_head_instead_of_the_projection(arch):
    over = [f"model.arch={arch}", "data.kind=digits", *ARCH_SETS[arch]]
    res = 32 if arch == "biggan" else 16
    info = DataInfo(shape=(1, res, res), num_classes=10, value_range=(-1.0, 1.0))
    build = resolve(ARCHS, arch, "model.arch")
    _, proj = build(load_config(None, over).model, info, BuildContext())
    _, aux = build(load_config(None, over + ["model.d_conditioning=auxiliary"]).model, info, BuildContext())
    aux.eval()  # spectral norm iterates in train mode: two calls would see two sigmas
    assert proj.embed is not None and proj.aux is None
    assert aux.embed is None and aux.aux.weight.shape[0] == 10
    x, y = torch.randn(4, 1, res, res), torch.arange(4)
    logits, classes = aux(x, y, return_class=True)
    assert logits.shape == (4,) and classes.shape == (4, 10)
    assert torch.equal(aux(x, y), logits)  # the plain call (penalties, eval) still gives the adversarial logits


def test_losses_carry_the_weighted_cross_entropy(tmp_path):
    """The logged aux terms are aux_weight x CE: D's on the real labels, G's on the sampled ones."""
    over = TINY + ["train.steps=1", "loss.aux_weight=0.25"]
    run_training(load_config(None, over), str(tmp_path / "a"))
    rec = [__import__("json").loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = rec[-1]["losses"]
    # at init the class head is near uniform over 10 classes: CE close to ln 10, times the weight
    assert abs(losses["D/aux"] / 0.25 - torch.log(torch.tensor(10.0)).item()) < 1.0
    assert abs(losses["G/aux"] / 0.25 - torch.log(torch.tensor(10.0)).item()) < 1.0
    run_training(load_config(None, over[:-1] + ["loss.aux_weight=0.0"]), str(tmp_path / "b"))
    rec0 = [__import__("json").loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rec0[-1]["losses"]["D/aux"] == 0.0
    # same init, same batch: the adversarial part is the same, the weighted CE is what separates the totals
    assert abs(losses["D"] - losses["D/aux"] - rec0[-1]["losses"]["D"]) < 1e-5


def test_class_head_learns_the_real_labels(tmp_path):
    run_training(load_config(None, TINY + ["train.steps=60", "optim.d.lr=2e-3"]), str(tmp_path / "run"))
    run = gandist.load_run(str(tmp_path / "run"))
    from gandist.data.sources import load_digits_tensor

    x, y = load_digits_tensor(8)
    x = x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    with torch.no_grad():
        _, classes = run.D.eval()(x[:500], y[:500], return_class=True)
    accuracy = float((classes.argmax(1) == y[:500]).float().mean())
    assert accuracy > 0.5, accuracy  # chance is 0.1
    assert F.cross_entropy(classes, y[:500]) < 2.0


@pytest.mark.parametrize("bad,keys", [(["model.conditional=false"], "model.conditional"),
                                      (["augment.pack=2"], "augment.pack"),
                                      (["data={kind: webdataset, urls: 'x-{0..1}.tar', num_classes: 0}"],
                                       "data.num_classes")])
def test_auxiliary_d_without_labels_is_refused(bad, keys):
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + bad)
    line = str(err.value)
    assert "model.d_conditioning" in line and keys in line and len(line.splitlines()) == 1
