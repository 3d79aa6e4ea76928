"""Fine-tuning: train.init_from loads weights only; model.freeze_d keeps D's first blocks frozen in every phase."""
import pytest
import torch

import gandist
from gandist.config import load_config
from gandist.errors import CheckpointError, ConfigError
from gandist.train.finetune import parse_init_from
from gandist.train.loop import Trainer, run_training

TINY = ["model.arch=dcgan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
        "train.batch_size=16", "train.ema.decay=0.9", "telemetry.progress=false", "telemetry.sample_every=0",
        "penalties=[{kind: r1, weight: 1.0, every: 2}]"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("source") / "run"
    run_training(load_config(None, TINY + ["train.steps=3", "checkpoint.every=3"]), str(run_dir))
    return run_dir


def test_init_from_spec_parses_step_and_best():
    assert parse_init_from("runs/a") == ("runs/a", "latest")
    assert parse_init_from("runs/a@120") == ("runs/a", "120")
    assert parse_init_from("s3://b/x@best") == ("s3://b/x", "best")
    assert parse_init_from("runs/user@host") == ("runs/user@host", "latest")


def test_init_from_loads_weights_but_no_optimizer_step_or_data(tmp_path, source_run):
    cfg = load_config(None, TINY + ["train.steps=2", f"train.init_from={source_run}@3", "seed=5"])
    src = gandist.load_run(str(source_run), 3)
    trainer = Trainer(cfg, str(tmp_path / "ft"))
    try:
        assert trainer.step == 0 and trainer.images_seen == 0
        for name, net, want in (("G", trainer.strategy.module("G"), src.G), ("D", trainer.strategy.module("D"), src.D),
                                ("G_ema", trainer.G_ema, src.G_ema)):
            for key, value in want.state_dict().items():  # buffers too: SN vectors, BN statistics
                assert torch.equal(net.state_dict()[key], value), (name, key)
        for n in ("G", "D"):
            assert not trainer.strategy.optimizers[n].state, f"{n}'s Adam state must start empty"
    finally:
        trainer.close()


def test_init_from_names_the_first_mismatching_parameter(tmp_path, source_run):
    cfg = load_config(None, TINY + ["model.ch=16", f"train.init_from={source_run}"])
    with pytest.raises(CheckpointError, match=r"train.init_from=.*G does not match.*'fc.weight' has shape "
                                              r"\(128, 16\) in the checkpoint, \(256, 16\) in this config"):
        Trainer(cfg, str(tmp_path / "ft"))


def test_init_from_another_arch_is_refused(tmp_path, source_run):
    cfg = load_config(None, ["model.arch=resnet", "model.ch=8", "data.kind=digits", "data.resolution=8",
                             "telemetry.progress=false", f"train.init_from={source_run}"])
    with pytest.raises(CheckpointError, match="holds a dcgan model, model.arch is resnet"):
        Trainer(cfg, str(tmp_path / "ft"))


def test_freeze_d_larger_than_d_is_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"model.freeze_d=4 but the D of model.arch=dcgan .* has 2 blocks"):
        load_config(None, TINY + ["model.freeze_d=4"])


@pytest.mark.parametrize("arch, extra, blocks", [
    ("mlp", ["data.kind=toy2d", "model.depth=3"], 3), ("dcgan", ["data.kind=digits", "data.resolution=16"], 3),
    ("resnet", ["data.kind=digits", "data.resolution=16"], 2), ("stylegan2", ["data.kind=digits"], 2),
    ("biggan_deep", ["data.kind=digits", "data.resolution=32", "model.attention=[]"], 6)])
def test_each_d_says_what_its_blocks_are(arch, extra, blocks):
    load_config(None, [f"model.arch={arch}", f"model.freeze_d={blocks}", *extra])
    with pytest.raises(ConfigError, match=f"has {blocks} blocks"):
        load_config(None, [f"model.arch={arch}", f"model.freeze_d={blocks + 1}", *extra])


def test_frozen_d_blocks_stay_unchanged_through_every_phase_and_resume(tmp_path, source_run):
    # r1 every 2 steps: the lazy D phase runs too; resumed at step 2 from the run's own checkpoint
    base = TINY + [f"train.init_from={source_run}", "model.freeze_d=1", "checkpoint.every=2"]
    run_dir = str(tmp_path / "ft")
    run_training(load_config(None, base + ["train.steps=2"]), run_dir)
    run_training(load_config(None, base + ["train.steps=4"]), run_dir)
    src, got = gandist.load_run(str(source_run)), gandist.load_run(run_dir)
    frozen = {f"features.0.{k}" for k in dict(src.D.features[0].named_parameters())}
    assert frozen
    d_src, d_got = dict(src.D.named_parameters()), dict(got.D.named_parameters())
    for key in d_src:
        if key in frozen:
            assert torch.equal(d_got[key], d_src[key]), f"frozen {key} changed"
        elif key != "fc.bias":  # hinge: an exact zero gradient while every logit is inside the margin
            assert not torch.equal(d_got[key], d_src[key]), f"{key} did not train"
    assert got.step == 4
