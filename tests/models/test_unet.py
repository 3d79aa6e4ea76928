"""U-Net GAN (model.arch=unet): the D's global and per-pixel outputs, the per-pixel loss, CutMix's mask, consistency
term and warm-up (penalties: [{kind: cutmix}]), training on digits, resume, and the refusals."""
import json

import pytest
import torch
import torch.nn.functional as F

import gandist
from gandist.config import ConfigError, load_config
from gandist.data.base import DataInfo
from gandist.objectives import losses
from gandist.objectives.cutmix import CutMix, consistency, cutmix_mask
from gandist.objectives.penalties import PenaltyContext, build_penalties
from gandist.randomness import GlobalRandom
from gandist.train.loop import run_training

import modelkit

TINY = ["model.arch=unet", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
        "train.batch_size=16", "telemetry.progress=false", "telemetry.sample_every=0", "telemetry.log_every=1",
        "train.ema.enabled=false"]
CUTMIX = "penalties=[{kind: cutmix, prob: 1.0, warmup_steps: 0}]"


@pytest.mark.parametrize("res,classes", [(8, 10), (16, 0), (32, 10)])
def test_d_gives_a_global_logit_and_one_logit_per_pixel(res, classes):
    G, D = modelkit.build(["model.arch=unet", "data.kind=digits", "model.ch=8", "model.z_dim=16"],
                          DataInfo((1, res, res), classes))
    D.eval()  # spectral norm iterates in train mode: two calls would see two sigmas
    x, y = torch.randn(3, 1, res, res), (torch.arange(3) if classes else None)
    logits, pixels = D(x, y, return_pixels=True)
    assert logits.shape == (3,) and pixels.shape == (3, res, res)
    assert torch.equal(D(x, y), logits)  # the plain call (penalties, eval) is the global output
    assert G(torch.randn(3, 16), y).shape == (3, 1, res, res)
    # per-pixel: a change confined to one corner moves the pixel logits there more than at the far corner
    x2 = x.clone()
    x2[:, :, :2, :2] += 3.0
    moved = (D(x2, y, return_pixels=True)[1] - pixels).abs().mean(0)
    assert moved[:2, :2].mean() > moved[-2:, -2:].mean()


def test_per_pixel_loss_is_the_adversarial_loss_on_every_pixel_averaged():
    cfg = load_config(None, ["loss.kind=hinge"]).loss
    real = torch.tensor([[[0.5, -2.0], [1.5, 0.0]]])  # [N=1, 2, 2]
    fake = torch.tensor([[[-1.5, 0.5], [0.0, -0.25]]])
    # hand: relu(1 - r) = 0.5, 3, 0, 1 -> mean 1.125; relu(1 + f) = 0, 1.5, 1, 0.75 -> mean 0.8125
    d = losses.d_loss(cfg, real.flatten(), fake.flatten())
    assert d.item() == pytest.approx(1.125 + 0.8125)
    g = losses.g_loss(cfg, fake.flatten())
    assert g.item() == pytest.approx(-(-1.5 + 0.5 + 0.0 - 0.25) / 4)
    # the per-logit terms CutMix uses add up to each loss's own D loss
    for kind in ("ns", "hinge", "wasserstein", "ls"):
        c = load_config(None, [f"loss.kind={kind}"]).loss
        as_real, _ = losses.d_terms(c, real)
        _, as_fake = losses.d_terms(c, fake)
        assert torch.allclose(as_real.mean() + as_fake.mean(), losses.d_loss(c, real, fake)), kind


def test_loop_adds_the_weighted_per_pixel_loss(tmp_path):
    """Same init, same batch: D's total with pixel_weight w minus the logged D/pixel is the total without it."""
    over = TINY + ["train.steps=1"]
    run_training(load_config(None, over + ["model.pixel_weight=0.25"]), str(tmp_path / "a"))
    run_training(load_config(None, over + ["model.pixel_weight=0.0"]), str(tmp_path / "b"))
    a = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])["losses"]
    b = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])["losses"]
    assert b["D/pixel"] == 0.0 and a["D/pixel"] > 0
    # at init the pixel logits are small: hinge gives about relu(1) + relu(1) = 2 per pixel
    assert 0.5 < a["D/pixel"] / 0.25 < 3.5
    assert abs(a["D"] - a["D/pixel"] - b["D"]) < 1e-5
    assert abs(a["G"] - a["G/pixel"] - b["G"]) < 1e-5


def test_cutmix_mask_is_a_clipped_box_of_the_fake():
    mask = cutmix_mask(torch.tensor([[0.75, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 0.3, 0.9]]), 8, 8)
    assert mask.shape == (3, 1, 8, 8)
    box = torch.ones(8, 8)
    box[2:6, 2:6] = 0  # lambda 0.75: side sqrt(0.25) x 8 = 4, centred at (4, 4)
    assert torch.equal(mask[0, 0], box)
    corner = torch.ones(8, 8)
    corner[:4, :4] = 0  # lambda 0: a full-size box centred on the corner, clipped to its quarter
    assert torch.equal(mask[1, 0], corner)
    assert torch.equal(mask[2, 0], torch.ones(8, 8))  # lambda 1: no box, all real


def test_cutmix_penalty_on_fixed_outputs():
    cfg = load_config(None, ["model.arch=unet", "data.kind=digits", "loss.kind=hinge",
                             "penalties=[{kind: cutmix, weight: 2.0, prob: 1.0, warmup_steps: 0}]"])
    (pen,) = build_penalties(cfg.penalties)
    real_pix, fake_pix = torch.full((2, 4, 4), 1.0), torch.full((2, 4, 4), -1.0)
    mixed_pix, mixed_logits = torch.zeros(2, 4, 4), torch.tensor([0.5, -0.5])
    seen = {}

    def d_pixels(x, y):
        seen["x"] = x
        return mixed_logits, mixed_pix

    rand = GlobalRandom(7, 3, "D0", 0, 2)
    real, fake = torch.ones(2, 1, 4, 4), -torch.ones(2, 1, 4, 4)
    ctx = PenaltyContext(3, d_forward=None, real=real, fake=fake, rand=rand, real_pixels=real_pix,
                         fake_pixels=fake_pix, d_pixels=d_pixels, d_terms=lambda t: losses.d_terms(cfg.loss, t))
    value = pen.loss(ctx)
    mask = cutmix_mask(GlobalRandom(7, 3, "D0", 0, 2).rand(2, 3), 4, 4)  # the same stream, drawn again
    assert torch.equal(seen["x"], mask * real + (1 - mask) * fake)
    m = mask[:, 0]
    # hand, hinge: the mix is fake for the global output: relu(1 + l); the pixels (all 0) have target M:
    # relu(1 - 0) = 1 where real and relu(1 + 0) = 1 where fake; consistency: (0 - (M * 1 + (1 - M) * -1))^2 = 1
    expected = F.relu(1 + mixed_logits).mean() + 1.0 + 2.0 * 1.0
    assert value.item() == pytest.approx(expected.item())
    assert consistency(mixed_pix, real_pix, fake_pix, mask).item() == pytest.approx(1.0)
    assert 0 < float(m.mean()) < 1


def test_cutmix_warm_up_and_coin_are_world_size_invariant():
    cfg = load_config(None, ["model.arch=unet", "data.kind=digits",
                             "penalties=[{kind: cutmix, prob: 0.5, warmup_steps: 200}]"])
    (pen,) = build_penalties(cfg.penalties)
    assert [pen.probability(s) for s in (0, 100, 200, 1000)] == [0.0, 0.25, 0.5, 0.5]
    assert isinstance(pen, CutMix) and pen.state_dict() == {}  # a function of the step: nothing to checkpoint

    def coin(step, offset):
        return pen.applies(PenaltyContext(step, d_forward=None, rand=GlobalRandom(1, step, "D0", offset, 8)))

    # the coin does not depend on the rank's offset, and is taken with about the ramped probability
    assert all(coin(s, 0) == coin(s, 4) for s in range(300, 340))
    assert not any(coin(0, 0) for _ in range(3))
    share = sum(coin(s, 0) for s in range(1000, 1400)) / 400
    assert 0.4 < share < 0.6
    # the masks of global samples 4..7 are the same drawn by one rank of 8 or by the second rank of two
    whole = GlobalRandom(1, 5, "D0", 0, 8).rand(8, 3)
    assert torch.equal(GlobalRandom(1, 5, "D0", 4, 8).rand(4, 3), whole[4:])


def test_trains_on_digits_with_finite_losses_and_resumes_mid_warm_up_bitwise(tmp_path):
    over = TINY + ["penalties=[{kind: cutmix, prob: 1.0, warmup_steps: 4}]"]
    run_training(load_config(None, over + ["train.steps=4", "checkpoint.every=2"]), str(tmp_path / "straight"))
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert set(r["losses"]) >= {"D", "G", "D/pixel", "G/pixel", "D/cutmix"}
        assert all(torch.isfinite(torch.tensor(v)) for v in r["losses"].values()), r["losses"]
    # p ramps 0, 0.25, 0.5, 0.75: step 0 never mixes (its term is 0); this seed mixes at least once after
    assert records[0]["losses"]["D/cutmix"] == 0.0 and any(r["losses"]["D/cutmix"] > 0 for r in records[1:])
    run_training(load_config(None, over + ["train.steps=2", "checkpoint.every=2"]), str(tmp_path / "resumed"))
    run_training(load_config(None, over + ["train.steps=4", "checkpoint.every=2"]), str(tmp_path / "resumed"))
    a, b = gandist.load_run(str(tmp_path / "straight")), gandist.load_run(str(tmp_path / "resumed"))
    assert a.step == b.step == 4
    for net in ("G", "D"):
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), net


@pytest.mark.parametrize("bad,keys", [
    (["data={kind: toy2d}"], ("model.arch=unet", "data.kind=toy2d")),
    (["augment.pack=2"], ("model.arch=unet", "augment.pack")),
    (["model.arch=dcgan", CUTMIX], ("penalties.0", "model.arch=dcgan")),
    ([CUTMIX, "loss.kind=relativistic"], ("penalties.0", "loss.kind=relativistic")),
    ([CUTMIX, "augment.diffaugment=translation"], ("penalties.0", "augment.diffaugment")),
    (["penalties=[{kind: cutmix, every: 2}]"], ("penalties.0", "every")),
])
def test_what_cannot_work_is_refused_in_one_line(bad, keys):
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + bad)
    line = str(err.value)
    assert len(line.splitlines()) == 1 and all(k in line for k in keys), line
