"""`gandist project`: fitting a StyleGAN2 w to an image generated from a known w recovers the image."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gandist
from gandist.eval.features import DigitsNet
from gandist.eval.projector import digits_distance, lr_at, noise_regularization, project

TINY_SG2 = ["model.arch=stylegan2", "model.z_dim=16", "model.w_dim=16", "model.mapping_layers=2",
            "model.d_mapping_layers=1", "model.channel_base=256", "model.channel_max=16", "data.kind=digits",
            "data.resolution=16", "model.conditional=false", "train.batch_size=8", "train.ema.start_step=0",
            "train.steps=2", "checkpoint.every=2", "telemetry.progress=false", "telemetry.sample_every=0"]


@pytest.fixture(scope="module")
def tiny_sg2_run(tmp_path_factory):
    """A 2-step unconditional StyleGAN2 run on 16 px grey digits (G 4..16 px, 16 channels)."""
    from gandist.config import load_config
    from gandist.train.loop import run_training

    run_dir = tmp_path_factory.mktemp("tiny-sg2") / "run"
    run_training(load_config(None, TINY_SG2), str(run_dir))
    return run_dir


def _target(G, seed: int = 5) -> torch.Tensor:
    """G's image of a known w (mapping of a seeded z, G's own constant noise)."""
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed)))
        return G.synthesis(ws, noise_mode="const")


def test_lr_ramps_and_noise_regularization_follow_the_paper():
    assert lr_at(0.0, 0.1) == 0 and lr_at(0.025, 0.1) == pytest.approx(0.05)  # linear over the first 5%
    assert lr_at(0.5, 0.1) == pytest.approx(0.1) and lr_at(0.875, 0.1) == pytest.approx(0.05)  # cosine, last 25%
    gen = torch.Generator().manual_seed(0)
    white = [torch.randn(16, 16, generator=gen)]
    smooth = [torch.ones(16, 16)]  # fully correlated: (mean 1*1)^2 twice per scale, at 16 and 8 px
    assert float(noise_regularization(smooth)) == pytest.approx(4.0)
    assert float(noise_regularization(white)) < 0.05


def test_projecting_a_generated_image_recovers_it(tiny_sg2_run):
    G = gandist.load_run(str(tiny_sg2_run)).G_ema
    target = _target(G)
    torch.manual_seed(0)
    net = DigitsNet().eval().requires_grad_(False)  # seeded, untrained: the real architecture without 20 s training
    before = {k: v.clone() for k, v in G.state_dict().items()}
    r = project(G, target, digits_distance(net), steps=100, space="w", seed=0)
    mse = lambda image: float((image - target[0]).square().mean())  # noqa: E731
    # measured (2026-12-03): distance 0.5354 at w_avg -> 0.0103, pixel MSE 0.331 -> 0.0056 (images in [-1, 1])
    assert r["final_distance"] < 0.02 and r["final_distance"] < r["start_distance"] / 20
    assert mse(r["image"]) < 0.02 and mse(r["image"]) < mse(r["start_image"]) / 20
    assert r["distance"][-1] < r["distance"][0] / 10 and len(r["distance"]) == 100
    assert r["ws"].shape == (G.num_ws, G.w_dim) and torch.equal(r["ws"][0], r["ws"][-1])  # W: one w for every layer
    for name, n in r["noise"].items():  # renormalized after each step
        assert abs(float(n.mean())) < 1e-5 and float(n.square().mean()) == pytest.approx(1.0, abs=1e-4), name
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items())  # G itself is not changed
    # the written ws and noise maps give the projected image again
    for name, n in r["noise"].items():
        G.synthesis.get_buffer(name).copy_(n)
    with torch.no_grad():
        assert torch.allclose(G.synthesis(r["ws"][None], noise_mode="const")[0], r["image"], atol=1e-5)


def test_cli_writes_the_latent_the_image_and_a_progress_strip(tiny_sg2_run, untrained_digits_cache, tmp_path,
                                                               capsys):
    from PIL import Image

    from gandist.cli import main
    from gandist.telemetry.samples import image_grid_png, save_png

    G = gandist.load_run(str(tiny_sg2_run)).G_ema
    image = tmp_path / "target.png"
    save_png(str(image), image_grid_png(_target(G, seed=7), nrow=1))  # 18x18: the grid's 1-px border
    out = tmp_path / "proj"
    args = ["project", str(tiny_sg2_run), str(image), "--out", str(out), "--distance", "digits", "--space", "w+",
            "--steps", "40", "--snapshots", "4", "--no-progress"]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "resized from 18x18 to the generator's 16x16" in said and "distance" in said
    latent = np.load(out / "projected_w.npz")
    assert latent["ws"].shape == (G.num_ws, G.w_dim) and str(latent["space"]) == "w+" and int(latent["step"]) == 2
    assert sorted(k for k in latent.files if k.startswith("noise/")) == sorted(
        f"noise/{name}" for name, _ in G.synthesis.named_buffers() if name.endswith("noise_const"))
    assert Image.open(out / "projected.png").size == (18, 18)
    # target, start, snapshots at steps 0, 10, 20, 30 and the result: 7 images of 16 px with 1-px gaps
    assert Image.open(out / "progress.png").size == (7 * 17 + 1, 18)
    summary = json.loads((out / "projection.json").read_text())
    assert summary["progress_steps"] == [0, 10, 20, 30, 40] and summary["net"] == "G_ema"
    assert summary["final_pixel_mse"] < summary["start_pixel_mse"] / 3


def test_cli_projects_with_lpips_from_user_files_and_checks_their_sha256(tiny_sg2_run, random_lpips_files, tmp_path):
    from PIL import Image

    from gandist.cli import main

    f, image, out = random_lpips_files, tmp_path / "target.png", tmp_path / "proj"
    G = gandist.load_run(str(tiny_sg2_run)).G_ema
    pixels = ((_target(G)[0, 0].clamp(-1, 1) + 1) * 127.5 + 0.5).numpy().astype(np.uint8)
    Image.fromarray(pixels, "L").save(image)  # 16x16 grey: no resize
    args = ["project", str(tiny_sg2_run), str(image), "--out", str(out), "--lpips-path", str(f["lpips"]),
            "--vgg16-path", str(f["vgg16"]), "--steps", "30", "--snapshots", "0", "--no-progress"]
    assert main(args) == 2 and not out.exists()  # random VGG16 weights are not torchvision's file: refused first
    assert main([*args, "--set", f"eval.vgg16_sha256={f['vgg16_sha256']}"]) == 0
    summary = json.loads((out / "projection.json").read_text())
    # measured (2026-12-03, random LPIPS weights, 30 steps): LPIPS 0.0442 at w_avg -> 0.0085, pixel MSE 0.325 -> 0.032
    assert summary["resized"] is None and summary["weights_sha256"]["vgg16"] == f["vgg16_sha256"]
    assert summary["final_distance"] < summary["start_distance"] / 3
    assert summary["final_pixel_mse"] < summary["start_pixel_mse"] / 3


@pytest.mark.parametrize("case, message", [
    ("dcgan", "model.arch is dcgan; gandist project fits the w of a StyleGAN2 G"),
    ("rgb", "has 3 channels (PIL mode RGB) but the generator makes grey images (1 channel); convert it"),
    ("unreadable", "cannot read the image"),
    ("no_lpips", "--distance lpips needs the LPIPS-VGG16 weights: pass --lpips-path"),
])
def test_bad_input_is_refused_before_any_work(tiny_sg2_run, tmp_path, capsys, case, message):
    from PIL import Image

    from gandist.cli import main

    run_dir, image = tiny_sg2_run, tmp_path / "in.png"
    Image.new("L", (16, 16)).save(image)
    extra = ["--distance", "digits"]
    if case == "dcgan":  # a run dir of another arch: refused from its config.yaml, no checkpoint is read
        run_dir = tmp_path / "dcgan"
        (run_dir / "checkpoints" / "step-00000001").mkdir(parents=True)
        (run_dir / "config.yaml").write_text("model: {arch: dcgan}\ndata: {kind: digits}\n")
    elif case == "rgb":
        Image.new("RGB", (16, 16)).save(image)
    elif case == "unreadable":
        image.write_text("not a png")
    elif case == "no_lpips":
        extra = []
    out = tmp_path / "out"
    assert main(["project", str(run_dir), str(image), "--out", str(out), "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
