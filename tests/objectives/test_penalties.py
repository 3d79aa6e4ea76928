"""Penalties against closed forms: R1/GP/DRAGAN of linear critics, weight clipping, bCR, path length, ortho."""
import math

import pytest
import torch
from torch import nn

from gandist.objectives.augment import consistency_transform, pack
from gandist.randomness import GlobalRandom
from gandist.objectives.config import (
    ConsistencyConfig, DraganConfig, GradientPenaltyConfig, OrthoConfig, PathLengthConfig, R1Config, WeightClipConfig,
)
from gandist.objectives.penalties import PENALTIES, PenaltyContext, build_penalties


class LinearCritic(nn.Module):
    """D(x) = w . flatten(x): its input gradient is w everywhere."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x, y=None):
        return x.flatten(1) @ self.w


def unit_vector(dim: int, norm: float) -> torch.Tensor:
    w = torch.randn(dim, generator=torch.Generator().manual_seed(dim))
    return w / w.norm() * norm


def rand(n: int, tag: str = "D") -> GlobalRandom:
    return GlobalRandom(seed=3, step=11, tag=tag, offset=0, global_n=n)


def d_ctx(D, n: int = 16, shape=(1, 4, 4), **extra) -> PenaltyContext:
    g = torch.Generator().manual_seed(5)
    real, fake = torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)
    return PenaltyContext(step=11, d_forward=lambda x, y: D(x, y), D=D, real=real, fake=fake, rand=rand(n), **extra)


def test_every_penalty_kind_is_registered():
    assert set(PENALTIES) == {"gp", "dragan", "r1", "weight_clip", "spectral_reg", "bcr", "cr", "zcr", "lecam", "path_length", "ortho", "cutmix"}
    built = build_penalties([R1Config(weight=2, every=16), PathLengthConfig()])
    assert [(p.name, p.net, p.every, p.weight) for p in built] == [("r1", "D", 16, 2.0), ("path_length", "G", 4, 2.0)]


def test_r1_of_linear_critic_is_half_gamma_times_squared_weight_norm():
    w = unit_vector(16, 1.7)
    D = LinearCritic(w)
    (penalty,) = build_penalties([R1Config(weight=4.0)])
    loss = penalty.loss(d_ctx(D))
    assert loss.item() == pytest.approx(4.0 / 2 * 1.7 ** 2, rel=1e-5)
    # create_graph: d/dw (gamma/2 ||w||^2) = gamma * w reaches D's parameters
    loss.backward()
    assert torch.allclose(D.w.grad, 4.0 * w, atol=1e-5)


@pytest.mark.parametrize("kind", ["gp", "dragan"])
@pytest.mark.parametrize("norm, expected", [(1.0, 0.0), (2.0, 1.0), (0.5, 0.25)])
def test_gradient_penalty_of_linear_critic_is_squared_distance_of_norm_to_one(kind, norm, expected):
    D = LinearCritic(unit_vector(16, norm))
    cfg = GradientPenaltyConfig(weight=10.0) if kind == "gp" else DraganConfig(weight=10.0)
    (penalty,) = build_penalties([cfg])
    loss = penalty.loss(d_ctx(D))
    assert loss.item() == pytest.approx(10.0 * expected, abs=1e-4)
    loss.backward()
    # d/dw 10 (||w|| - 1)^2 = 20 (||w|| - 1) w / ||w||
    assert torch.allclose(D.w.grad, 20 * (norm - 1) * D.w.detach() / norm, atol=1e-4)


def test_gradient_penalty_is_evaluated_between_real_and_fake():
    # D(x) = ||x||^2 / 2 has grad x: the penalty reads the norms of the interpolates themselves
    D = lambda x, y: 0.5 * x.flatten(1).square().sum(1)  # noqa: E731
    ctx = d_ctx(D, n=6, shape=(3,))
    (penalty,) = build_penalties([GradientPenaltyConfig(weight=1.0, center=0.0)])
    value = penalty.loss(ctx).item()  # weight 1: the unweighted value
    eps = rand(6).rand(6, 1)  # the mixing weights of the replayed stream
    x_hat = eps * ctx.real + (1 - eps) * ctx.fake
    assert value == pytest.approx(x_hat.square().sum(1).mean().item(), rel=1e-5)


def test_penalties_see_packs_not_samples_under_pacgan():
    # a packed critic judges pairs: its input gradient per pack is the whole w (norm 2), per sample only half of it
    w = unit_vector(32, 2.0)
    D = LinearCritic(w)
    ctx = d_ctx(D)
    ctx.d_forward = lambda x, y: D(pack(x, 2))
    (r1,) = build_penalties([R1Config(weight=2.0)])
    assert r1.loss(ctx).item() == pytest.approx(4.0, rel=1e-5)
    (gp,) = build_penalties([GradientPenaltyConfig(weight=1.0)])
    assert gp.loss(ctx).item() == pytest.approx(1.0, rel=1e-4)


def test_r1_reaches_parameters_hidden_behind_a_parametrization():
    # weight-normed critic: w = g v/||v||, so R1 = gamma/2 g^2, d/dg = gamma g and d/dv = 0 (the direction is free)
    from torch.nn.utils.parametrizations import weight_norm

    layer = weight_norm(nn.Linear(16, 1, bias=False), dim=None)
    with torch.no_grad():
        layer.parametrizations.weight.original0.fill_(1.5)  # g
    D = lambda x, y: layer(x.flatten(1)).squeeze(1)  # noqa: E731
    (penalty,) = build_penalties([R1Config(weight=2.0)])
    loss = penalty.loss(d_ctx(D))
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 2.0 * 1.5 ** 2, rel=1e-5)
    g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    assert g.grad.item() == pytest.approx(2.0 * 1.5, rel=1e-5)
    assert v.grad.abs().max().item() < 1e-5


def test_weight_clip_bounds_every_parameter_and_adds_no_loss():
    D = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        for p in D.parameters():
            p.normal_(0, 1)
    before = [p.detach().clone() for p in D.parameters()]
    (clip,) = build_penalties([WeightClipConfig(clip=0.05)])
    assert clip.loss(d_ctx(D, shape=(4,))).item() == 0.0
    clip.after_step(D)
    for p, old in zip(D.parameters(), before):
        assert p.abs().max() <= torch.tensor(0.05)  # the float32 bound
        assert torch.equal(p, old.clamp(-0.05, 0.05))


class StandardizedCritic(nn.Module):
    """D(x) = w . (x - mean x) / std x: invariant to the per-image affine maps of DiffAugment 'color' on gray images."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(unit_vector(dim, 1.0))

    def forward(self, x, y=None):
        flat = x.flatten(1)
        return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)) @ self.w


def test_bcr_is_zero_when_d_is_invariant_to_the_transform():
    D = StandardizedCritic(16)
    (bcr,) = build_penalties([ConsistencyConfig(weight=10.0, augment="color")])
    assert bcr.loss(d_ctx(D)).item() < 1e-8
    # and for a critic that is not invariant it is positive
    (bcr_linear,) = build_penalties([ConsistencyConfig(weight=10.0, augment="color")])
    assert bcr_linear.loss(d_ctx(LinearCritic(unit_vector(16, 1.0)))).item() > 0.1


def test_bcr_is_zero_for_a_shift_invariant_d_on_centred_content():
    # content inside the central 8x8 of 16x16 survives any translation of up to 2 pixels
    D = lambda x, y: x.flatten(1).square().sum(1)  # noqa: E731
    ctx = d_ctx(D, shape=(1, 16, 16))
    for name in ("real", "fake"):
        x = torch.zeros_like(getattr(ctx, name))
        x[:, :, 4:12, 4:12] = getattr(ctx, name)[:, :, 4:12, 4:12]
        setattr(ctx, name, x)
    (bcr,) = build_penalties([ConsistencyConfig(weight=1.0, augment="translation")])
    assert bcr.loss(ctx).item() < 1e-9  # equal up to summation order


def test_bcr_is_the_mean_squared_logit_change_on_real_and_fake():
    D = LinearCritic(unit_vector(256, 1.0))
    ctx = d_ctx(D, shape=(1, 16, 16))
    (bcr,) = build_penalties([ConsistencyConfig(weight=3.0, augment="translation,cutout")])
    loss = bcr.loss(ctx)
    replay = rand(16)
    real_t = consistency_transform(ctx.real, "translation,cutout", replay)
    fake_t = consistency_transform(ctx.fake, "translation,cutout", replay)
    expected = ((D(ctx.real) - D(real_t)) ** 2).mean() + ((D(ctx.fake) - D(fake_t)) ** 2).mean()
    assert loss.item() == pytest.approx(3.0 * expected.item(), rel=1e-5)
    loss.backward()
    assert D.w.grad.abs().sum() > 0


def test_bcr_on_vectors_is_refused_with_the_fix():
    (bcr,) = build_penalties([ConsistencyConfig()])
    with pytest.raises(ValueError, match="remove bcr"):
        bcr.loss(d_ctx(LinearCritic(unit_vector(2, 1.0)), shape=(2,)))


class LinearStyleG(nn.Module):
    """mapping: z -> ws = z broadcast to num_ws rows; synthesis: x = A ws.flatten() (a [1, 4, 4] image)."""

    z_dim, num_classes, num_ws = 6, 0, 2

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.randn(16, self.num_ws * self.z_dim, generator=torch.Generator().manual_seed(2)))

    def mapping(self, z, y=None):
        return z.unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws):
        return (ws.flatten(1) @ self.A.t()).reshape(-1, 1, 4, 4)


def test_path_length_of_linear_synthesis_matches_the_analytic_jacobian():
    G = LinearStyleG()
    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(9))
    cfg = PathLengthConfig(weight=2.0, decay=0.01, batch_shrink=2)
    (pl,) = build_penalties([cfg])
    ctx = PenaltyContext(step=0, d_forward=None, G=G, z=z, rand=rand(8, "G"))
    loss = pl.loss(ctx)
    # J_w^T n = A^T n (per ws row: its slice of A^T n); length = ||A^T n|| / sqrt(num_ws), n = noise / sqrt(16)
    noise = rand(8, "G").randn(4, 1, 4, 4).flatten(1) / 4.0
    A = G.A.detach()
    lengths = (noise @ A).norm(dim=1) / math.sqrt(G.num_ws)
    pl_mean = 0.01 * lengths.mean()  # lerp from 0
    assert pl.state_dict()["pl_mean"].item() == pytest.approx(pl_mean.item(), rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * ((lengths - pl_mean) ** 2).mean().item(), rel=1e-5)
    # the gradient into G equals that of the closed form with the running mean held fixed
    loss.backward()
    A_ref = A.clone().requires_grad_(True)
    closed = 2.0 * (((noise @ A_ref).norm(dim=1) / math.sqrt(G.num_ws) - pl_mean) ** 2).mean()
    closed.backward()
    assert torch.allclose(G.A.grad, A_ref.grad, atol=1e-5)


def test_path_length_expected_square_is_frobenius_norm_over_pixels():
    # E||A^T n||^2 = ||A||_F^2 / pixels for n ~ N(0, I/pixels): checked over 4000 draws
    G = LinearStyleG()
    (pl,) = build_penalties([PathLengthConfig(batch_shrink=1, weight=1.0, decay=0.01)])
    z = torch.zeros(4000, 6)
    value = pl.loss(PenaltyContext(step=0, d_forward=None, G=G, z=z, rand=rand(4000, "G"))).item()
    # first call: m = 0.01 E[L] and value = E[(L - m)^2] = E[L^2] - 2 m E[L] + m^2, so E[L^2] = value + 199 m^2
    m = pl.state_dict()["pl_mean"].item()
    mean_square_length = value + 2 * m * m / 0.01 - m * m
    expected = G.A.detach().square().sum().item() / 16 / G.num_ws
    assert mean_square_length == pytest.approx(expected, rel=0.04)


def test_path_length_running_mean_survives_state_dict_round_trip():
    G = LinearStyleG()
    z = torch.randn(8, 6)
    (a,) = build_penalties([PathLengthConfig()])
    (b,) = build_penalties([PathLengthConfig()])
    for step in range(3):
        a.loss(PenaltyContext(step=step, d_forward=None, G=G, z=z, rand=rand(8, "G")))
    b.load_state_dict(a.state_dict())
    ctx = lambda: PenaltyContext(step=3, d_forward=None, G=G, z=z, rand=rand(8, "G"))  # noqa: E731
    assert a.loss(ctx()).item() == b.loss(ctx()).item()
    assert torch.equal(a.pl_mean, b.pl_mean)


def test_path_length_mean_is_reduced_across_ranks_when_the_loop_offers_it():
    G = LinearStyleG()
    (pl,) = build_penalties([PathLengthConfig(decay=0.5)])
    ctx = PenaltyContext(step=0, d_forward=None, G=G, z=torch.randn(8, 6), rand=rand(8, "G"),
                         reduce_mean=lambda t: torch.full_like(t, 10.0))  # as if the other ranks averaged to 10
    pl.loss(ctx)
    assert pl.pl_mean.item() == pytest.approx(5.0)


def test_path_length_on_a_generator_without_mapping_is_refused():
    (pl,) = build_penalties([PathLengthConfig()])
    ctx = PenaltyContext(step=0, d_forward=None, G=nn.Linear(2, 2), z=torch.randn(4, 2), rand=rand(4, "G"))
    with pytest.raises(ValueError, match="model.arch=stylegan2"):
        pl.loss(ctx)


def test_missing_context_field_names_the_field():
    (r1,) = build_penalties([R1Config()])
    with pytest.raises(ValueError, match="PenaltyContext.real is missing"):
        r1.loss(PenaltyContext(step=0, d_forward=lambda x, y: x))


def test_ortho_penalty_is_zero_for_orthogonal_rows_and_linear_in_beta():
    pytest.importorskip("gandist.nn.ortho")
    G = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        G.weight.copy_(torch.linalg.qr(torch.randn(8, 4))[0].t())  # orthonormal rows
    (ortho,) = build_penalties([OrthoConfig(weight=1e-2)])
    assert ortho.loss(PenaltyContext(step=0, d_forward=None, G=G)).item() == pytest.approx(0.0, abs=1e-8)
    with torch.no_grad():
        G.weight.normal_()
    small = ortho.loss(PenaltyContext(step=0, d_forward=None, G=G))
    assert small.item() > 0
    (big,) = build_penalties([OrthoConfig(weight=2e-2)])
    assert big.loss(PenaltyContext(step=0, d_forward=None, G=G)).item() == pytest.approx(2 * small.item(), rel=1e-5)
    small.backward()
    assert G.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg", [GradientPenaltyConfig(weight=1.0, every=4), ConsistencyConfig(weight=1.0, every=4)])
def test_lazy_d_penalties_draw_fakes_from_g_when_the_phase_has_none(cfg):
    # a lazy D phase passes g_forward and z instead of fakes; with a G whose output equals the stored fakes the
    # penalty must equal the one computed from those fakes
    D = LinearCritic(unit_vector(16, 2.0))
    ctx = d_ctx(D)
    stored = ctx.fake
    lazy = PenaltyContext(step=11, d_forward=ctx.d_forward, real=ctx.real, rand=rand(16),
                          g_forward=lambda z, y: stored[:z.shape[0]], z=torch.zeros(16, 3))
    (a,) = build_penalties([cfg])
    (b,) = build_penalties([cfg])
    assert a.loss(lazy).item() == pytest.approx(b.loss(ctx).item(), rel=1e-6)
    with pytest.raises(ValueError, match="g_forward and z"):
        a.loss(PenaltyContext(step=11, d_forward=ctx.d_forward, real=ctx.real, rand=rand(16)))


def test_dragan_is_world_size_invariant_when_the_loop_reduces_moments():
    # D(x) = ||x||^2 / 2 has grad x, so the penalty depends on every perturbation and on the batch std
    D = lambda x, y: 0.5 * x.flatten(1).square().sum(1)  # noqa: E731
    real = torch.randn(16, 3, generator=torch.Generator().manual_seed(4)) * 2 + 1
    (full,) = build_penalties([DraganConfig(weight=1.0)])
    whole = full.loss(PenaltyContext(step=0, d_forward=D, real=real, rand=rand(16))).item()
    halves = real[:8], real[8:]
    moments = [torch.stack([h.mean(), h.square().mean()]) for h in halves]
    both = (moments[0] + moments[1]) / 2  # what an all-reduce mean over the two ranks returns
    per_rank = []
    for r, half in enumerate(halves):
        (p,) = build_penalties([DraganConfig(weight=1.0)])
        ctx = PenaltyContext(step=0, d_forward=D, real=half, reduce_mean=lambda t: both,
                             rand=GlobalRandom(seed=3, step=11, tag="D", offset=r * 8, global_n=16))
        per_rank.append(p.loss(ctx).item())
    assert sum(per_rank) / 2 == pytest.approx(whole, rel=1e-6)
    # the scale is the population std of the global batch
    assert dragan_std(real) == pytest.approx(real.std(unbiased=False).item(), rel=1e-6)


def dragan_std(real: torch.Tensor) -> float:
    from gandist.objectives.penalties import Dragan

    return Dragan._batch_std(PenaltyContext(step=0, d_forward=None), real).item()
