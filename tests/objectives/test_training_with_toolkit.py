"""The toolkit inside real (tiny) training runs: each penalty and augmentation reaches the loss and the weights."""
import json
import math

import pytest
import torch

import gandist
from gandist.config import load_config
from gandist.train.loop import run_training

QUIET = ["telemetry.progress=false", "telemetry.sample_every=0", "telemetry.log_every=1", "checkpoint.every=100"]
TOY = ["model.arch=mlp", "model.hidden=16", "model.depth=2", "data.kind=toy2d", "train.batch_size=32"] + QUIET
DIGITS = ["model.arch=dcgan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
          "train.batch_size=16"] + QUIET  # spectral norm on (the default)


def train(tmp_path, overrides, steps=3) -> dict:
    cfg = load_config(None, overrides + [f"train.steps={steps}"])
    return run_training(cfg, str(tmp_path / "run"))


@pytest.mark.parametrize("base, penalty, extra", [
    (TOY, "{kind: gp, weight: 10.0}", ["loss.kind=wasserstein", "augment.pack=2"]),
    (TOY, "{kind: dragan, weight: 10.0}", ["augment.instance_noise.std=0.1"]),
    (TOY, "{kind: r1, weight: 1.0}", ["loss.kind=relativistic"]),
    (DIGITS, "{kind: bcr, weight: 10.0, augment: 'translation,cutout'}", ["augment.diffaugment=color"]),
    (DIGITS, "{kind: r1, weight: 1.0}", ["augment.diffaugment=translation"]),
    (DIGITS, "{kind: ortho, weight: 1.0e-2}", []),
], ids=["gp-wasserstein-pack2", "dragan-noise", "r1-ragan", "bcr-diffaugment", "r1-sn-conditional-d", "ortho"])
def test_each_penalty_enters_the_phase_loss_of_a_training_run(tmp_path, base, penalty, extra):
    summary = train(tmp_path, base + extra + [f"penalties=[{penalty}]"])
    name = penalty.split(",")[0].split(":")[1].strip()
    net = "G" if name == "ortho" else "D"
    value = summary["last_losses"][f"{net}/{name}"]
    assert math.isfinite(value) and value > 0
    assert summary["steps"] == 3


def test_lazy_gradient_penalty_runs_in_its_own_phase(tmp_path):
    # every: 2 -> the D regularization phase draws its own fakes through g_forward
    summary = train(tmp_path, TOY + ["penalties=[{kind: gp, weight: 10.0, every: 2}]"], steps=3)
    assert summary["last_losses"]["D/gp"] > 0  # step index 2 is a regularization step


def test_weight_clipping_bounds_d_after_training(tmp_path):
    train(tmp_path, TOY + ["loss.kind=wasserstein", "penalties=[{kind: weight_clip, clip: 0.02}]"], steps=4)
    run = gandist.load_run(str(tmp_path / "run"))
    largest = max(p.abs().max() for p in run.D.parameters())
    assert largest <= torch.tensor(0.02)
    assert largest == torch.tensor(0.02)  # initial weights are larger than 0.02: some sit on the bound
    assert max(p.abs().max() for p in run.G.parameters()) > 0.02  # G is not clipped


def test_diffaugment_on_toy_data_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="augment.diffaugment=''"):
        train(tmp_path, TOY + ["augment.diffaugment=translation"], steps=1)


SG2 = ["model.arch=stylegan2", "model.z_dim=16", "model.w_dim=16", "model.mapping_layers=1", "model.d_mapping_layers=1",
       "model.channel_base=64", "model.channel_max=8", "data.kind=digits", "data.resolution=8",
       "train.batch_size=8", "train.ema.start_step=0"] + QUIET


def _weights(run_dir) -> dict:
    run = gandist.load_run(str(run_dir))
    nets = {"G": run.G, "D": run.D, "EMA": run.G_ema}
    return {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}


def test_path_length_trains_stylegan2_and_resumes_exactly(tmp_path):
    # the running mean path length lives in the penalty's state_dict: resume must restore it, or the 2nd half differs
    pl = ["penalties=[{kind: path_length, weight: 2.0, every: 2}]", "checkpoint.every=2"]
    run_training(load_config(None, SG2 + pl + ["train.steps=4"]), str(tmp_path / "straight"))
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    values = [r["losses"]["G/path_length"] for r in records if "G/path_length" in r["losses"]]
    assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)  # steps 0 and 2 regularize
    run_training(load_config(None, SG2 + pl + ["train.steps=2"]), str(tmp_path / "resumed"))
    run_training(load_config(None, SG2 + pl + ["train.steps=4"]), str(tmp_path / "resumed"))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
