"""LeCam, zCR, CR on reals / separate bCR weights, and top-k against their formulas written out by hand."""
import pytest
import torch
import torch.nn.functional as F

from gandist.config import ConfigError, load_config
from gandist.objectives import losses
from gandist.objectives.config import ConsistencyConfig, LatentConsistencyConfig, LeCamConfig, LossConfig, TopKConfig
from gandist.objectives.logit_penalties import LatentConsistencyD, LatentConsistencyG, LeCam
from gandist.objectives.penalties import BalancedConsistency, PenaltyContext
from gandist.randomness import GlobalRandom


def _rand():
    return GlobalRandom(7, 1, "D0", 0, 6)


torch.manual_seed(0)
D = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1), torch.nn.Flatten(0))
G = torch.nn.Sequential(torch.nn.Linear(4, 3 * 8 * 8), torch.nn.Tanh(), torch.nn.Unflatten(1, (3, 8, 8)))
REAL = torch.rand(6, 3, 8, 8) * 2 - 1
Z = torch.randn(6, 4)


def _ctx(**kw):
    return PenaltyContext(step=5, d_forward=lambda x, y: D(x), g_forward=lambda z, y: G(z), real=REAL,
                          fake=G(Z).detach(), z=Z, rand=_rand(), **kw)


def _bcr(**kw):
    return float(BalancedConsistency(ConsistencyConfig(**kw)).loss(_ctx()).detach())


def test_cr_is_the_real_term_and_bcr_weights_its_two_terms_separately():
    real_term = _bcr(kind="cr", weight=1.0)
    fake_term = _bcr(kind="bcr", weight=1.0) - real_term
    assert real_term > 0 and fake_term > 0
    assert _bcr(kind="bcr", weight_real=1.0, weight_fake=0.0) == pytest.approx(real_term)
    assert _bcr(kind="bcr", weight_real=2.0, weight_fake=3.0) == pytest.approx(2 * real_term + 3 * fake_term)
    assert _bcr(kind="cr", weight=4.0, weight_fake=9.0) == pytest.approx(4 * real_term)  # cr has no fake term


def test_zcr_terms_match_their_formulas():
    cfg = LatentConsistencyConfig(weight=2.0, g_weight=0.5, sigma=0.1)
    dz = 0.1 * _rand().randn(6, 4)
    with torch.no_grad():
        d_expected = 2.0 * (D(G(Z)) - D(G(Z + dz))).square().mean()
        g_expected = -0.5 * (G(Z) - G(Z + dz)).flatten(1).square().mean()
    assert float(LatentConsistencyD(cfg).loss(_ctx())) == pytest.approx(float(d_expected), rel=1e-5)
    g_term = LatentConsistencyG(cfg)
    assert g_term.net == "G" and float(g_term.loss(_ctx())) == pytest.approx(float(g_expected), rel=1e-5)


def test_lecam_uses_and_updates_the_logit_emas():
    pen = LeCam(LeCamConfig(weight=0.3, decay=0.9, start_step=0))
    real1, fake1 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.5, -3.0])
    value = float(pen.loss(_ctx(real_logits=real1, fake_logits=fake1)))
    ema_r, ema_f = 2.0, -3.5 / 3  # the first update starts the EMAs at the means
    expected = 0.3 * (F.relu(real1 - ema_f).square().mean() + F.relu(ema_r - fake1).square().mean())
    assert value == pytest.approx(float(expected))
    real2, fake2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 0.0])
    pen.loss(_ctx(real_logits=real2, fake_logits=fake2))
    assert pen.ema.tolist() == pytest.approx([0.9 * 2.0 + 0.1 * 1.0, 0.9 * ema_f])
    late = LeCam(LeCamConfig(weight=0.3, start_step=6))  # ctx.step is 5: not yet, but the EMAs move
    assert float(late.loss(_ctx(real_logits=real1, fake_logits=fake1))) == 0.0 and late.seen


def test_topk_over_two_ranks_is_the_global_topk_mean_and_k_decays_with_images():
    cfg = LossConfig(kind="ns", topk=TopKConfig(gamma=0.5, min_fraction=0.25, kimg=0.01))
    logits = torch.tensor([0.3, -1.0, 2.0, 0.1, -0.2, 1.5, 0.7, -2.0])
    assert [losses.topk_count(cfg.topk, 8, n) for n in (0, 10, 20, 1000)] == [8, 4, 2, 2]
    k = losses.topk_count(cfg.topk, 8, 10)
    expected = F.softplus(-logits.topk(k).values).mean()
    single = losses.topk_g_loss(cfg, logits, [logits], 0, 10)
    halves = [logits[:4], logits[4:]]
    ranks = [losses.topk_g_loss(cfg, h, halves, r, 10) for r, h in enumerate(halves)]
    assert float(single) == pytest.approx(float(expected))
    assert float(sum(ranks) / 2) == pytest.approx(float(expected))


@pytest.mark.parametrize("overrides, keys", [
    (["data.kind=toy2d", "model.arch=mlp", "augment.ada={}"], "augment.ada"),
    (["loss.topk={min_fraction: 0.01}", "train.batch_size=16"], "loss.topk.min_fraction"),
    (["loss.topk={}", "loss.kind=relativistic"], "loss.topk"),
    (["penalties=[{kind: lecam, weight: 0.3, every: 4}]"], "penalties.0"),
    (["augment.ada={pipeline: 'blit,warp'}"], "augment.ada.pipeline"),
    (["data.kind=toy2d", "model.arch=mlp", "penalties=[{kind: cr}]"], "penalties.0"),
], ids=["ada-points", "topk-no-sample", "topk-relativistic", "lecam-lazy", "ada-pipeline", "cr-points"])
def test_bad_settings_are_refused_in_one_line_naming_the_keys(overrides, keys):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert keys in message, message
    assert len(message.strip().splitlines()) <= 2, message
