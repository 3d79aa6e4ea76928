"""optim.lr_decay_start: both learning rates constant, then linear towards 0 at train.steps; resume-exact."""
from __future__ import annotations

import shutil

import pytest
import torch

from gandist.config import load_config
from gandist.train.loop import Trainer, run_training

TOY = ["data.kind=toy2d", "model.hidden=16", "train.batch_size=16", "telemetry.progress=false",
       "checkpoint.every=10", "optim.lr_decay_start=0.5"]


def _lrs(trainer) -> tuple[float, float]:
    return tuple(trainer.strategy.optimizers[n].param_groups[0]["lr"] for n in ("G", "D"))


def test_lr_is_constant_then_decays_linearly(tmp_path):
    cfg = load_config(None, TOY + ["train.steps=20", "optim.g.lr=1e-3", "optim.d.lr=4e-3"])
    trainer = Trainer(cfg, str(tmp_path / "run"))
    try:
        assert [trainer.lr.decay(t) for t in (0, 9, 10, 15, 19)] == [1.0, 1.0, 1.0, 0.5, 0.1]
        seen = []
        while trainer.step < cfg.train.steps:
            trainer.lr.apply(trainer.step)
            seen.append(_lrs(trainer))
            trainer.train_step()
        assert seen[9] == pytest.approx((1e-3, 4e-3)) and seen[15] == pytest.approx((5e-4, 2e-3))
        assert seen[19] == pytest.approx((1e-4, 4e-4))
    finally:
        trainer.close()


def test_resume_inside_the_decay_equals_an_uninterrupted_run(tmp_path):
    import gandist

    cfg = load_config(None, TOY + ["train.steps=20", "checkpoint.every=5", "checkpoint.keep_last=10"])
    run_training(cfg, str(tmp_path / "whole"))
    shutil.copytree(tmp_path / "whole", tmp_path / "legs")
    shutil.rmtree(tmp_path / "legs" / "checkpoints" / "step-00000020")  # as if the run stopped after step 15
    (tmp_path / "legs" / "checkpoints" / "latest").write_text("step-00000015")
    run_training(cfg, str(tmp_path / "legs"))  # resumes at 15, inside the decay (from 10)
    a, b = gandist.load_run(str(tmp_path / "whole")), gandist.load_run(str(tmp_path / "legs"))
    assert b.step == 20
    for (name, x), y in zip(a.G.state_dict().items(), b.G.state_dict().values()):
        assert torch.equal(x, y), name
