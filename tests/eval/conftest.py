"""Fixtures of the evaluation tests: a trained digits feature network per session, tiny runs, random LPIPS files."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory):
    """GANDIST_CACHE pointing at a session folder holding a trained digits network (trained once, ~20 s)."""
    import os

    from gandist.eval.features import DIGITS_FILE, save_digits_net, train_digits_net

    folder = tmp_path_factory.mktemp("gandist-cache")
    net, accuracy = train_digits_net()
    save_digits_net(net, accuracy, folder / DIGITS_FILE)
    old = os.environ.get("GANDIST_CACHE")
    os.environ["GANDIST_CACHE"] = str(folder)
    yield {"folder": folder, "net": net, "accuracy": accuracy}
    if old is None:
        os.environ.pop("GANDIST_CACHE", None)
    else:
        os.environ["GANDIST_CACHE"] = old


@pytest.fixture
def untrained_digits_cache(tmp_path, monkeypatch):
    """GANDIST_CACHE holding a seeded, untrained digits network (the real architecture, no 20 s of training)."""
    import torch

    from gandist.eval.features import DIGITS_FILE, DigitsNet, save_digits_net

    torch.manual_seed(0)
    net = DigitsNet().eval().requires_grad_(False)
    save_digits_net(net, 0.0, tmp_path / DIGITS_FILE)
    monkeypatch.setenv("GANDIST_CACHE", str(tmp_path))
    return {"folder": tmp_path, "net": net}


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory):
    """A 4-step conditional DCGAN run on digits (a checkpoint to evaluate, in about a second)."""
    from pathlib import Path

    from gandist.config import load_config
    from gandist.train.loop import run_training

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "demo_digits.yaml", [
        "train.steps=4", "train.batch_size=16", "checkpoint.every=4", "model.ch=8", "train.ema.start_step=0",
        "telemetry.progress=false", "telemetry.sample_every=0"])
    run_dir = tmp_path_factory.mktemp("tiny-digits") / "run"
    run_training(cfg, str(run_dir))
    return run_dir


@pytest.fixture
def random_lpips_files(tmp_path):
    """Random weights in torchvision's vgg16 layout (plus a classifier key) and lpips v0.1's heads layout."""
    import torch

    from gandist.eval.features import sha256_of
    from gandist.eval.lpips import LinearHeads, vgg16_features

    torch.manual_seed(0)
    vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    vgg["classifier.6.bias"] = torch.zeros(1000)  # torchvision's file also holds the classifier: ignored
    heads = {k: v.abs() for k, v in LinearHeads().state_dict().items()}  # lpips' heads are non-negative
    paths = {"vgg16": tmp_path / "vgg16-random.pth", "lpips": tmp_path / "vgg.pth"}
    torch.save(vgg, paths["vgg16"])
    torch.save(heads, paths["lpips"])
    return {**paths, "vgg16_sha256": sha256_of(paths["vgg16"].read_bytes())}
