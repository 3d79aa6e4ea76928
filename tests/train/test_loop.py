"""Loop semantics: accumulation, lazy regularization, EMA, AMP, every loss, image folders."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import gandist
from gandist.config import load_config
from gandist.train.loop import Trainer, run_training

TINY = ["model={arch: mlp, hidden: 16, depth: 2}", "train.batch_size=16", "telemetry.progress=false",
        "telemetry.sample_every=0", "checkpoint.every=100", "train.steps=3"]


def _params(run_dir):
    run = gandist.load_run(str(run_dir))
    return torch.cat([p.flatten() for net in (run.G, run.D, run.G_ema) for p in net.parameters()])


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    extra = ["penalties=[{kind: gp, weight: 1.0}]"]
    run_training(load_config(None, TINY + extra + ["optim.accumulation=1"]), str(tmp_path / "a"))
    run_training(load_config(None, TINY + extra + ["optim.accumulation=4"]), str(tmp_path / "b"))
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), float((a - b).abs().max())


def test_lazy_regularization_rescales_adam_and_runs_every_k(tmp_path):
    cfg = load_config(None, TINY + ["optim.d.lr=1e-3", "optim.d.betas=[0.5,0.99]", "train.steps=8",
                                    "penalties=[{kind: r1, weight: 1.0, every: 4}]", "telemetry.log_every=1"])
    trainer = Trainer(cfg, str(tmp_path))
    group = trainer.strategy.optimizers["D"].param_groups[0]
    ratio = 4 / 5
    assert group["lr"] == pytest.approx(1e-3 * ratio)
    assert group["betas"][0] == pytest.approx(0.5 ** ratio) and group["betas"][1] == pytest.approx(0.99 ** ratio)
    assert trainer.strategy.optimizers["G"].param_groups[0]["lr"] == pytest.approx(cfg.optim.g.lr)
    trainer.run()
    trainer.close()
    steps_with_r1 = [r["step"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "D/r1" in r["losses"]]
    assert steps_with_r1 == [1, 5]  # the reg phase runs when (step before increment) % 4 == 0


def test_ema_with_zero_decay_equals_g(tmp_path):
    run_training(load_config(None, TINY + ["train.ema.decay=0.0"]), str(tmp_path))
    run = gandist.load_run(str(tmp_path))
    for a, b in zip(run.G.parameters(), run.G_ema.parameters()):
        assert torch.equal(a, b)


def test_ema_averages_after_start_step(tmp_path):
    run_training(load_config(None, TINY + ["train.ema.decay=0.5", "train.ema.start_step=0"]), str(tmp_path))
    run = gandist.load_run(str(tmp_path))
    diff = sum(float((a - b).abs().sum()) for a, b in zip(run.G.parameters(), run.G_ema.parameters()))
    assert diff > 0


@pytest.mark.parametrize("kind", ["ns", "hinge", "wasserstein", "ls", "relativistic"])
def test_every_loss_trains_with_finite_values(tmp_path, kind):
    summary = run_training(load_config(None, TINY + [f"loss.kind={kind}"]), str(tmp_path))
    assert summary["steps"] == 3
    assert all(np.isfinite(v) for v in summary["last_losses"].values())


def test_bf16_autocast_on_cpu_trains(tmp_path):
    cfg = TINY + ["model={arch: dcgan, ch: 8}", "data.kind=digits", "data.resolution=8", "train.amp=bf16"]
    summary = run_training(load_config(None, cfg), str(tmp_path))
    assert all(np.isfinite(v) for v in summary["last_losses"].values())


def test_image_folder_with_class_subfolders_trains(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    cfg = load_config(None, TINY + ["model={arch: dcgan, ch: 8}", "data.kind=folder",
                                    f"data.path={tmp_path / 'data'}", "data.resolution=8", "train.batch_size=4"])
    run_training(cfg, str(tmp_path / "run"))
    run = gandist.load_run(str(tmp_path / "run"))
    assert run.info.shape == (3, 8, 8) and run.info.num_classes == 2 and run.G.num_classes == 2


def test_batch_that_does_not_divide_into_micro_batches_is_refused(tmp_path):
    from gandist.errors import UserError

    with pytest.raises(UserError, match="optim.accumulation"):
        Trainer(load_config(None, TINY + ["train.batch_size=10", "optim.accumulation=4"]), str(tmp_path))
