"""`gandist train` under torchrun (2 gloo ranks): ddp and zero* give single's weights; checkpoints cross strategies.

Per-rank batch b on 2 ranks against batch 2b on one process, from the same seed: G, D and EMA parameters within
1e-5 relative after every leg. One run dir is carried through ddp -> zero2 -> zero2 -> ddp legs, which covers the
checkpoint paths: ddp resumes under zero2, zero2 (2 ranks) resumes on 2 ranks, zero2's checkpoint loads on one
process for `gandist generate`, and zero2 resumes under ddp.
"""
from __future__ import annotations

import pytest
import torch

import gandist
from distributed_testutil import gandist as run_gandist
from distributed_testutil import torchrun

pytestmark = pytest.mark.slow

TOY = ["configs/toy_ring8_tiny.yaml", "--set", "checkpoint.every=1", "--set", "checkpoint.keep_last=10",
       "--set", "telemetry.progress=false", "--set", "train.batch_size=32"]
# the lead's DCGAN: BN in G, SN in D, class-conditional; cross-replica BN makes its batch statistics global
DCGAN = ["configs/demo_digits.yaml", "--set", "checkpoint.every=1", "--set", "checkpoint.keep_last=10",
         "--set", "telemetry.progress=false", "--set", "train.batch_size=16", "--set", "model.ch=8",
         "--set", "telemetry.sample_every=0", "--set", "distributed.cross_replica_bn=true"]


def _ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def train(base: list[str], run_dir, steps: int, strategy: str = "single", nproc: int = 1) -> None:
    argv = ["train", *base, "--set", f"train.steps={steps}", "--set", f"distributed.strategy={strategy}",
            "--run-dir", str(run_dir)]
    _ok(torchrun(nproc, argv) if nproc > 1 else run_gandist(argv))


def biases_before_batch_norm(module: torch.nn.Module) -> set[str]:
    """Biases of layers whose next layer is a BN: BN cancels them, so their true gradient is exactly 0 and Adam
    turns round-off (which differs between any two reduction orders) into lr-sized steps. Not comparable."""
    leaves = [(n, m) for n, m in module.named_modules() if not list(m.children())]
    return {f"{n}.bias" for (n, m), (_, nxt) in zip(leaves, leaves[1:])
            if getattr(m, "bias", None) is not None and isinstance(nxt, torch.nn.modules.batchnorm._BatchNorm)}


def worst_relative_error(run_a, run_b, step: int) -> dict[str, float]:
    """max over tensors of ||a - b|| / ||b|| for G, D and the EMA G at checkpoint `step`."""
    a, b = gandist.load_run(str(run_a), checkpoint=step), gandist.load_run(str(run_b), checkpoint=step)
    out = {}
    for net in ("G", "D", "G_ema"):
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert sa.keys() == sb.keys()
        skip = biases_before_batch_norm(getattr(b, net))
        errors = {k: float((sa[k] - sb[k]).float().norm() / max(float(sb[k].float().norm()), 1e-12))
                  for k in sb if sb[k].dtype.is_floating_point and k not in skip}
        out[net] = max(errors.values())
        out[f"{net} worst"] = max(errors, key=errors.get)
    moved = gandist.load_run(str(run_b), checkpoint=step).G.state_dict()
    start = gandist.load_run(str(run_b), checkpoint=1).G.state_dict()
    out["moved"] = max(float((moved[k] - start[k]).float().abs().max()) for k in start)
    return out


@pytest.fixture(scope="module")
def single_toy(tmp_path_factory):
    run = tmp_path_factory.mktemp("single_toy")
    train(TOY, run, steps=5)
    return run


def test_ddp_and_zero2_match_single_across_checkpoint_legs(single_toy, tmp_path):
    run = tmp_path / "legs"
    legs = [("ddp", 2), ("zero2", 3), ("zero2", 4), ("ddp", 5)]
    for strategy, steps in legs:
        train(TOY, run, steps, strategy, nproc=2)
        err = worst_relative_error(run, single_toy, steps)
        assert max(err["G"], err["D"], err["G_ema"]) < 1e-5, (strategy, steps, err)
        assert err["moved"] > 1e-4 or steps == 1  # the weights did train
        if (strategy, steps) == ("zero2", 4):  # consolidated zero2 weights load on one process
            out = tmp_path / "grid.png"
            _ok(run_gandist(["generate", str(run), "--num", "16", "--out", str(out), "--checkpoint", "4"]))
            assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = gandist.load_run(str(run), checkpoint=4).manifest
    assert (manifest["strategy"], manifest["world_size"]) == ("zero2", 2)


def test_zero1_matches_single_after_one_step(single_toy, tmp_path):
    train(TOY, tmp_path / "z1", steps=1, strategy="zero1", nproc=2)
    err = worst_relative_error(tmp_path / "z1", single_toy, 1)
    assert max(err["G"], err["D"], err["G_ema"]) < 1e-5, err


def test_zero3_matches_single_after_one_step(single_toy, tmp_path):
    train(TOY, tmp_path / "z3", steps=1, strategy="zero3", nproc=2)
    err = worst_relative_error(tmp_path / "z3", single_toy, 1)
    assert max(err["G"], err["D"], err["G_ema"]) < 1e-5, err


@pytest.mark.parametrize("strategy,accumulation", [("ddp", 1), ("zero2", 1), ("ddp", 2)])
def test_dcgan_with_cross_replica_bn_matches_single(strategy, accumulation, tmp_path_factory, tmp_path):
    # with accumulation, global micro-batch i must hold the same samples at every world size (BN normalizes over it)
    base = DCGAN + ["--set", f"optim.accumulation={accumulation}"]
    single = tmp_path_factory.getbasetemp() / f"single_dcgan_acc{accumulation}"
    if not (single / "checkpoints").exists():
        train(base, single, steps=2)
    train(base, tmp_path / strategy, steps=2, strategy=strategy, nproc=2)
    err = worst_relative_error(tmp_path / strategy, single, 2)
    assert max(err["G"], err["D"], err["G_ema"]) < 1e-5, err
    running = gandist.load_run(str(tmp_path / strategy)).G.state_dict()
    assert any(k.endswith("running_var") for k in running)  # the model does have BN


def test_batch_that_does_not_divide_is_a_clear_error(tmp_path):
    argv = ["train", *TOY, "--set", "train.batch_size=33", "--set", "distributed.strategy=ddp", "--set",
            "train.steps=1", "--run-dir", str(tmp_path / "bad")]
    result = torchrun(2, argv)
    assert result.returncode != 0
    assert "train.batch_size 33" in result.stdout + result.stderr
