"""Resume is exact: N steps + resume + N steps gives bitwise the weights of 2N steps straight."""
import pytest
import torch

import gandist
from gandist.config import load_config
from gandist.train.loop import run_training

TINY_DCGAN = [
    "model.arch=dcgan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
    "train.batch_size=16", "optim.accumulation=2", "optim.d_steps=2", "train.ema.decay=0.9",
    "train.ema.start_step=1", "penalties=[{kind: r1, weight: 1.0, every: 2}]", "telemetry.progress=false",
    "telemetry.sample_every=0", "checkpoint.keep_last=5", "augment.diffaugment=translation",
]
TINY_MLP = ["model.arch=mlp", "model.hidden=16", "model.depth=2", "data.kind=toy2d", "train.batch_size=32",
            "loss.kind=relativistic", "telemetry.progress=false", "telemetry.sample_every=0",
            "augment.pack=2", "penalties=[{kind: gp, weight: 1.0}]"]


def _weights(run_dir):
    run = gandist.load_run(run_dir)
    out = {f"G.{k}": v for k, v in run.G.state_dict().items()}
    out.update({f"D.{k}": v for k, v in run.D.state_dict().items()})
    out.update({f"EMA.{k}": v for k, v in run.G_ema.state_dict().items()})
    return out


@pytest.mark.parametrize("overrides", [TINY_DCGAN, TINY_MLP], ids=["dcgan-bn-sn-r1-accum", "mlp-pacgan-gp-ragan"])
def test_resume_is_bitwise_exact(tmp_path, overrides):
    n = 4
    straight = load_config(None, overrides + [f"train.steps={2 * n}", f"checkpoint.every={n}"])
    run_training(straight, str(tmp_path / "straight"))

    first = load_config(None, overrides + [f"train.steps={n}", f"checkpoint.every={n}"])
    run_training(first, str(tmp_path / "resumed"))
    summary = run_training(straight, str(tmp_path / "resumed"))  # same dir, more steps: resumes at n
    assert summary["steps"] == 2 * n

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    # the run really trained: weights moved away from the initial ones
    init = load_config(None, overrides + ["train.steps=1", "checkpoint.every=1", "optim.g.lr=1e-12",
                                          "optim.d.lr=1e-12"])
    run_training(init, str(tmp_path / "init"))
    c = _weights(tmp_path / "init")
    assert any(not torch.allclose(a[k].float(), c[k].float()) for k in a if k.startswith("G."))
