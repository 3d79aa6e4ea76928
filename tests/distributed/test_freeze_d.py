"""FreezeD under torchrun (2 gloo ranks): D's frozen blocks keep the source run's weights, and ddp and zero2 give
single's fine-tuned weights (zero2 and zero3 build their engines after the blocks are frozen; zero3 all-gathers
the frozen partitions to save them whole, since it keeps no fp32 master copy of a parameter it never steps)."""
import json

import pytest
import torch

import gandist
from distkit import gandist as run_gandist
from distkit import torchrun

from closekit import MODEL_RTOL, compare_state, matches

pytestmark = pytest.mark.slow

BASE = ["configs/demo_digits.yaml", "--set", "model.ch=8", "--set", "data.resolution=8", "--set",
        "train.batch_size=16", "--set", "telemetry.progress=false", "--set", "telemetry.sample_every=0",
        "--set", "checkpoint.every=2", "--set", "train.ema.start_step=0",
        "--set", "distributed.cross_replica_bn=true"]  # G's BN statistics over the global batch, as single's


def _ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def train(run_dir, steps: int, extra=(), strategy="single", nproc=1) -> None:
    argv = ["train", *BASE, "--set", f"train.steps={steps}", "--set", f"distributed.strategy={strategy}",
            *[a for kv in extra for a in ("--set", kv)], "--run-dir", str(run_dir)]
    _ok(torchrun(nproc, argv) if nproc > 1 else run_gandist(argv))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("freeze_d")
    train(root / "source", 2)
    fine = [f"train.init_from={root / 'source'}", "model.freeze_d=2"]
    train(root / "single", 2, fine)
    return root, fine


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3"])
def test_frozen_d_blocks_are_unchanged_and_match_single(runs, strategy, tmp_path):
    root, fine = runs
    train(tmp_path / strategy, 2, fine, strategy, nproc=2)
    src, single, got = (gandist.load_run(str(d)) for d in (root / "source", root / "single", tmp_path / strategy))
    names = [k for k, _ in src.D.named_parameters()]
    frozen = {names[i] for i, p in enumerate(src.D.parameters())
              if any(p is q for b in src.D.freeze_blocks()[:2] for q in b.parameters())}
    assert frozen, "freeze_d=2 must freeze something"
    d_src, d_got = dict(src.D.named_parameters()), dict(got.D.named_parameters())
    for key in frozen:
        assert torch.equal(d_got[key], d_src[key]), f"{strategy}: frozen {key} changed"
    # the rest trained (hinge gives the output bias an exact zero gradient while every logit is inside the margin)
    assert all(not torch.equal(d_got[k], d_src[k]) for k in names if k not in frozen and k != "fc.bias")
    # D, which the freeze acts on, by both rules; G model-wide (biases a BN cancels drift by round-off elementwise:
    # see test_train_equivalence.biases_cancelled_by_batch_norm)
    report = compare_state(got.D.state_dict(), single.D.state_dict())
    assert matches(report), (strategy, "D", report)
    sg = single.G.state_dict()
    report = compare_state(got.G.state_dict(), sg, {k for k in sg if k.endswith(("running_mean", "running_var"))})
    assert report["model_relative"] < MODEL_RTOL, (strategy, "G", report)


def test_zero3_resumes_a_frozen_d_and_keeps_it_frozen(runs, tmp_path):
    """ZeRO-3's load writes the frozen partitions back with the other weights: a resume keeps them exactly."""
    root, fine = runs
    train(tmp_path / "z3", 2, fine, "zero3", nproc=2)
    train(tmp_path / "z3", 3, fine, "zero3", nproc=2)  # resumes from step 2
    events = [json.loads(line) for line in (tmp_path / "z3" / "events.jsonl").read_text().splitlines()]
    assert [e["resumed_from"] for e in events if e["event"] == "start"] == [None, 2]
    src, got = gandist.load_run(str(root / "source")), gandist.load_run(str(tmp_path / "z3"))
    d_src, d_got = dict(src.D.named_parameters()), dict(got.D.named_parameters())
    frozen = [k for k, p in d_src.items() if any(p is q for b in src.D.freeze_blocks()[:2] for q in b.parameters())]
    assert frozen and all(torch.equal(d_got[k], d_src[k]) for k in frozen)
    assert not torch.equal(d_got["fc.weight"], d_src["fc.weight"])  # the rest trained on through the resume
