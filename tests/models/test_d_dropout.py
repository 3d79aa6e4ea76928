"""model.d_dropout: dropout in D's hidden layers for mlp, dcgan and resnet; refused for the other archs."""
from __future__ import annotations

import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.data.base import DataInfo
from gandist.train.loop import run_training

from modelkit import TINY_BIGGAN, TINY_STYLEGAN2, build

ARCHS = {
    "mlp": (["model.arch=mlp", "model.hidden=16", "model.depth=2"], DataInfo((2,), 0)),
    "dcgan": (["data.kind=digits", "model.arch=dcgan", "model.ch=8", "model.z_dim=16"], DataInfo((1, 16, 16), 10)),
    "resnet": (["data.kind=digits", "model.arch=resnet", "model.ch=8", "model.z_dim=16"], DataInfo((1, 16, 16), 10)),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_dropout_randomizes_d_in_training_only_and_keeps_the_checkpoint_keys(arch):
    overrides, info = ARCHS[arch]
    overrides = overrides + ["model.spectral_norm=false"]  # SN's power iteration would change D between forwards too
    _, D0 = build(overrides, info)
    _, D = build(overrides + ["model.d_dropout=0.5"], info)
    assert list(D.state_dict()) == list(D0.state_dict())  # a p=0 checkpoint loads into a dropout D and back
    D.load_state_dict(D0.state_dict())
    x = torch.randn(8, *info.shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % info.num_classes if info.num_classes else None
    torch.manual_seed(0)
    a, b = D(x, y), D(x, y)
    assert (a - b).abs().max() > 1e-3  # two dropout masks
    assert torch.equal(D0(x, y), D0(x, y))  # without dropout: deterministic
    D.eval()
    D0.eval()
    assert torch.allclose(D(x, y), D0(x, y), atol=1e-6)  # eval: dropout is the identity
    assert sum(isinstance(m, torch.nn.Dropout) for m in D0.modules()) == 0


@pytest.mark.parametrize("overrides, arch", [(TINY_BIGGAN, "biggan"), (TINY_STYLEGAN2, "stylegan2")])
def test_d_dropout_on_an_arch_without_it_is_refused_with_the_fix(overrides, arch):
    with pytest.raises(ConfigError, match=f"model.d_dropout: the D of model.arch={arch} has no dropout; it is built "
                                          "for mlp, dcgan and resnet"):
        load_config(None, overrides + ["model.d_dropout=0.2"])
    assert load_config(None, overrides + ["model.d_dropout=0"]).model.arch == arch  # 0 (off) is what it does


def test_d_dropout_must_be_below_one():
    with pytest.raises(ConfigError, match=r"model.d_dropout: Input should be less than 1"):
        load_config(None, ARCHS["dcgan"][0] + ["model.d_dropout=1"])


def test_a_run_with_d_dropout_trains(tmp_path):
    cfg = load_config(None, ARCHS["dcgan"][0] + ["model.d_dropout=0.3", "data.resolution=8", "train.batch_size=16",
                                                  "train.steps=3", "telemetry.progress=false",
                                                  "telemetry.sample_every=0", "checkpoint.every=100"])
    summary = run_training(cfg, str(tmp_path / "run"))
    assert summary["steps"] == 3
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["last_losses"].values())
