"""train.compile under ddp (2 gloo ranks): the compiled nets train to the uncompiled ddp run's weights; inductor
without a C++ compiler is refused before training starts.

The ddp test compiles with train.compile_backend=aot_eager: the same dynamo capture and AOT-autograd forward and
backward graphs as inductor, run with torch's kernels. Inductor's C++ code generation costs minutes on this 2-core
machine from a cold cache (132 s for the two-layer MLP's 2 steps on one process under load), past a test's budget;
its ddp run was checked by hand (docs/training-loop.md, `train.compile`).
"""
from __future__ import annotations

import os

import pytest
import torch

from closekit import compare_state, matches
from distkit import free_port, spawn

TINY = ["model.arch=mlp", "model.hidden=16", "model.depth=2", "data.kind=toy2d", "train.batch_size=32",
        "telemetry.progress=false", "telemetry.sample_every=0", "train.steps=2", "checkpoint.every=1000",
        "distributed.strategy=ddp", "distributed.backend=gloo"]


def _weights(trainer) -> dict[str, dict]:
    return {n: {k: v.clone() for k, v in trainer.strategy.module(n).state_dict().items()} for n in ("G", "D")}


def _train(sets: list[str], run_dir: str) -> tuple[dict, dict]:
    """G's and D's weights before and after TINY's 2 steps with `sets`."""
    from gandist.config import load_config
    from gandist.train.loop import Trainer

    trainer = Trainer(load_config(None, TINY + sets), run_dir)
    try:
        assert bool(trainer.strategy.compiled) is ("train.compile=true" in sets)
        before = _weights(trainer)
        trainer.run()
        return before, _weights(trainer)
    finally:
        trainer.close()


def _rank(rank: int, world: int, out_dir: str, backend: str, compiled_port: int) -> None:
    start, eager = _train([], os.path.join(out_dir, "eager"))
    # a fresh port for the second process group: a rank that re-initializes on the first one can reach the
    # other rank's old store before it is gone, and the two groups then wait for each other forever
    os.environ["MASTER_PORT"] = str(compiled_port)
    _, compiled = _train(["train.compile=true", f"train.compile_backend={backend}"],
                         os.path.join(out_dir, "compiled"))
    torch.save({"start": start, "eager": eager, "compiled": compiled}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_compiled_ddp_matches_uncompiled_ddp(tmp_path):
    spawn(_rank, 2, str(tmp_path), "aot_eager", free_port())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for net in ("G", "D"):
        start, eager, compiled = (ranks[0][k][net] for k in ("start", "eager", "compiled"))
        report = compare_state(compiled, eager)
        assert matches(report), (net, report)
        assert not matches(compare_state(start, eager)), (net, "2 steps must move the weights past the rule")
        # every rank holds the same weights (gradients averaged, buffers broadcast from rank 0)
        assert all(torch.equal(ranks[1]["compiled"][net][k], compiled[k]) for k in compiled), net


def test_inductor_without_a_cpp_compiler_is_refused_before_training(tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config

    from gandist.config import ConfigError, load_config
    from gandist.train.loop import Trainer

    monkeypatch.setattr(inductor_config.cpp, "cxx", (str(tmp_path / "no-such-c++"),))
    cfg = load_config(None, TINY[:-2] + ["train.compile=true", "train.device=cpu"])
    with pytest.raises(ConfigError, match="train.compile=true with train.compile_backend=inductor on CPU needs a "
                                          "C\\+\\+ compiler .*install g\\+\\+"):
        Trainer(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
