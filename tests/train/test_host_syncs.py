"""Host syncs per training step stay a small constant (issue 14): signals reach the host in one transfer.

Counted on CPU by patching torch.Tensor's conversion methods (tests/synckit.py) over whole `run()`s of the shipped
configs with the watchdog on and telemetry at its defaults. Before the fix: 52 (demo DCGAN), 189 (tiny BigGAN), 141
(tiny StyleGAN2, 279 on its lazy-regularization steps) per step; now 2 (the signals' .tolist() and the verdict).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from distkit import spawn
from synckit import count_run_syncs

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["demo_digits", "biggan_tiny_digits", "stylegan2_tiny_digits"]
MAX_SYNCS = 4
# 5 steps: the stylegan2 config's lazy R1 and path length run at steps 0 and 4; step 2 is a log step
OVERRIDES = ["train.steps=5", "train.batch_size=16", "telemetry.progress=false", "telemetry.sample_every=0",
             "checkpoint.every=1000", "telemetry.log_every=2", "train.ema.start_step=0"]


def _per_step(config: str, run_dir: str, extra: list[str]) -> dict[int, int]:
    from gandist.config import load_config
    from gandist.train.loop import Trainer

    cfg = load_config(REPO / "configs" / f"{config}.yaml", OVERRIDES + extra)
    assert cfg.watchdog.enabled
    trainer = Trainer(cfg, run_dir)
    try:
        counter = count_run_syncs(trainer)
    finally:
        trainer.close()
    assert counter.iteration == cfg.train.steps - 1
    # the last step also writes the final checkpoint and samples (a copy of every tensor to the host)
    return {i: counter.per_iteration[i] for i in range(cfg.train.steps - 1)}


def _check(per_step: dict[int, int]) -> None:
    assert per_step and max(per_step.values()) <= MAX_SYNCS, per_step
    assert min(per_step.values()) >= 1  # the signals do reach the host: the counter sees them


@pytest.mark.parametrize("config", CONFIGS)
def test_single_process_step_syncs_a_constant_few_times(config, tmp_path):
    _check(_per_step(config, str(tmp_path), []))


def _ddp_rank(rank: int, world: int, config: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    run_dir = os.path.join(out_dir, "run")  # one run dir: rank 0 writes it
    counts = _per_step(config, run_dir, ["distributed.strategy=ddp", "distributed.backend=gloo"])
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(counts))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_ddp_step_syncs_a_constant_few_times(config):
    with tempfile.TemporaryDirectory() as out:
        spawn(_ddp_rank, 2, config, out)
        for rank in range(2):
            _check({int(k): v for k, v in json.loads(Path(out, f"rank{rank}.json").read_text()).items()})


def test_layer_grad_norms_match_per_parameter_norms_and_count_non_finite():
    from gandist.strategies.base import layer_grad_norms
    from gandist.train.signals import Signals

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net(torch.randn(5, 3)).square().sum().backward()
    total, layers, bad = layer_grad_norms(net)
    grads = {n: p.grad for n, p in net.named_parameters()}
    for name, g in grads.items():
        assert float(layers[name]) == float(g.norm())
    assert float(total) == pytest.approx(sum(float(g.norm()) ** 2 for g in grads.values()) ** 0.5, rel=1e-12)
    assert int(bad) == 0
    grads["0.weight"].view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    grads["1.bias"].view(-1)[0] = float("-inf")
    total, layers, bad = layer_grad_norms(net)
    sig = Signals(step=0, grad_norm={"D": total}, layer_grad_norm=dict(layers), nonfinite=bad)
    sig.resolve()
    assert sig.nonfinite == 3 and isinstance(sig.nonfinite, int)
    assert sig.layer_grad_norm["0.weight"] != sig.layer_grad_norm["0.weight"]  # NaN
    assert sig.layer_grad_norm["1.bias"] != sig.layer_grad_norm["1.bias"]
    assert sig.layer_grad_norm["0.bias"] == float(grads["0.bias"].norm())
    assert sig.grad_norm["D"] != sig.grad_norm["D"]
