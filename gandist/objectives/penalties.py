"""Regularizers of D and G. The loop adds `penalty.loss(ctx)` to the phase's loss (lazily every k steps, times k).

Interface (the loop relies on exactly this):
- `Penalty.name` (e.g. "r1"), `.net` ("D" or "G"), `.every` (k), `.weight`.
- `loss(ctx) -> Tensor`: the weighted scalar term (weight applied; the lazy factor k is applied by the loop).
- `after_step(module, step)`: called on the plain module of `net` after each of its main-phase optimizer steps
  (weight clipping, spectral regularization); `step` is the G step being taken.
- `check_config(cfg, index)` (optional staticmethod): cross-section refusals, run by config validation
  (config_checks.check_penalty_classes).
- `state_dict()` / `load_state_dict()`: running state (path-length mean) saved in checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from gandist.objectives.augment import consistency_transform
from gandist.randomness import GlobalRandom
from gandist.registry import PENALTIES, resolve


@dataclass
class PenaltyContext:
    """What a penalty may use. D penalties get real/fake; G penalties get z/y and the generator."""

    step: int
    d_forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # D incl. augmentation and packing
    g_forward: Callable[..., torch.Tensor] | None = None  # wrapped G: (z, y) -> x
    G: nn.Module | None = None  # plain G (gathered under ZeRO-3): mapping/synthesis, weights for ortho
    D: nn.Module | None = None  # plain D
    real: torch.Tensor | None = None
    real_y: torch.Tensor | None = None
    fake: torch.Tensor | None = None  # detached fakes (D phase)
    fake_y: torch.Tensor | None = None
    z: torch.Tensor | None = None
    y: torch.Tensor | None = None
    rand: GlobalRandom | None = None
    real_logits: torch.Tensor | None = None  # the D phase's D(real) and D(fake) logits, graph kept (LeCam)
    fake_logits: torch.Tensor | None = None
    # U-Net D (gandist/models/unet.py): the D phase's per-pixel logits [N, H, W] (graph kept), D with its per-pixel
    # output ((x, y) -> (logits, pixel logits)), and loss.kind's per-logit (as-real, as-fake) terms (CutMix)
    real_pixels: torch.Tensor | None = None
    fake_pixels: torch.Tensor | None = None
    d_pixels: Callable | None = None
    d_terms: Callable | None = None
    # optional: mean of a scalar over ranks (strategy all-reduce / world size); path length's running mean uses it
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None


class Penalty:
    """Base class of a regularizer."""

    name: str = "penalty"
    net: str = "D"
    double_backward: bool = False  # its loss holds a gradient (autograd.grad, create_graph): ZeRO-3 refuses it
    # the watchdog's penalty mitigation (watchdog.mitigation.r1_scale) multiplies weight_scale after a rollback
    mitigated: bool = False
    reaches_every_param: bool = True  # its loss has a gradient path to every parameter of its net

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.weight = float(cfg.weight)
        self.every = int(cfg.every)
        self.weight_scale = 1.0  # the loop multiplies loss(ctx) by it (set from the loop's checkpointed r1_factor)

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        """The weighted penalty term."""
        raise NotImplementedError

    def after_step(self, module: nn.Module, step: int = 0) -> None:
        """Hook after an optimizer step of `self.net` at G step `step` (no-op by default)."""

    def state_dict(self) -> dict:
        """Running state saved in checkpoints (none by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""

    def _need(self, ctx: PenaltyContext, *names: str) -> None:
        """Fail with one clear sentence when the loop did not provide a field this penalty uses."""
        for name in names:
            if getattr(ctx, name) is None:
                raise ValueError(f"penalty {self.name}: PenaltyContext.{name} is missing "
                                 f"(the {self.net} phase must pass it)")


def build_penalties(cfgs: list) -> list[Penalty]:
    """Penalty objects from the `penalties` config list (names: gandist/registry.py's PENALTIES)."""
    out = []
    for c in cfgs:
        made = resolve(PENALTIES, c.kind, "penalties.kind")(c)
        out.extend(made if isinstance(made, list) else [made])  # zcr: one penalty on D, one on G
    return out


def input_grads(ctx: PenaltyContext, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """grad_x sum(D(x)) reshaped to [D inputs, -1] (one row per pack under PacGAN), graph kept to train D."""
    x = x.detach().requires_grad_(True)
    logits = ctx.d_forward(x, y)
    # create_graph: the penalty is a function of D's parameters through this gradient (double backward)
    (grad,) = torch.autograd.grad(logits.float().sum(), x, create_graph=True)
    return grad.float().reshape(logits.shape[0], -1)


def fakes(ctx: PenaltyContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The D phase's detached fakes, or (lazy D regularization, which has none) fresh ones from ctx.g_forward."""
    if ctx.fake is not None:
        return ctx.fake.detach(), ctx.fake_y
    if ctx.g_forward is None or ctx.z is None:
        raise ValueError("a D penalty on fakes needs PenaltyContext.fake, or g_forward and z to draw them")
    with torch.no_grad():
        return ctx.g_forward(ctx.z, ctx.y).detach(), ctx.y


def _uniform_like_batch(rand: GlobalRandom, x: torch.Tensor) -> torch.Tensor:
    """One U[0,1) per sample, shaped [N, 1, ...] to broadcast over x."""
    return rand.rand(x.shape[0], *([1] * (x.dim() - 1))).to(device=x.device, dtype=x.dtype)


class GradientPenalty(Penalty):
    """WGAN-GP (Gulrajani et al. 2017): weight * E(||grad D(eps*real + (1-eps)*fake)|| - center)^2."""

    name = "gp"
    double_backward = True

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        self._need(ctx, "real", "rand")
        fake, _ = fakes(ctx)
        eps = _uniform_like_batch(ctx.rand, ctx.real)
        x_hat = eps * ctx.real.detach() + (1 - eps) * fake.to(ctx.real.dtype)
        norms = torch.linalg.vector_norm(input_grads(ctx, x_hat, ctx.real_y), dim=1)
        value = (norms - self.cfg.center).square().mean()
        return self.weight * value


class Dragan(Penalty):
    """DRAGAN (Kodali et al. 2017): the gradient penalty at points between real and real + c*std(real)*U[0,1)."""

    name = "dragan"
    double_backward = True

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        self._need(ctx, "real", "rand")
        real = ctx.real.detach()
        # the reference implementation's perturbation: uniform noise scaled by the batch's std
        noise = ctx.rand.rand(real.shape[0], *real.shape[1:]).to(real)
        perturb = self.cfg.perturb_std * self._batch_std(ctx, real) * noise
        x_hat = real + _uniform_like_batch(ctx.rand, real) * perturb
        norms = torch.linalg.vector_norm(input_grads(ctx, x_hat, ctx.real_y), dim=1)
        value = (norms - self.cfg.center).square().mean()
        return self.weight * value

    @staticmethod
    def _batch_std(ctx: PenaltyContext, real: torch.Tensor) -> torch.Tensor:
        """Std of the global batch's values: moments averaged over ranks when the loop offers ctx.reduce_mean."""
        moments = torch.stack([real.float().mean(), real.float().square().mean()])
        if ctx.reduce_mean is not None:  # equal per-rank batches: the mean of the ranks' moments is the global one
            moments = ctx.reduce_mean(moments)
        return (moments[1] - moments[0].square()).clamp_min(0).sqrt().to(real.dtype)


class R1(Penalty):
    """R1 (Mescheder et al. 2018): gamma/2 * E||grad_x D(x_real)||^2; `weight` is gamma."""

    name = "r1"
    double_backward = True
    mitigated = True

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        self._need(ctx, "real")
        value = input_grads(ctx, ctx.real, ctx.real_y).square().sum(1).mean()
        return 0.5 * self.weight * value


class WeightClip(Penalty):
    """WGAN weight clipping: after each D step every parameter of D is clamped to [-clip, clip]."""

    name = "weight_clip"

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        device = ctx.real.device if ctx.real is not None else "cpu"
        return torch.zeros((), device=device)

    @torch.no_grad()
    def after_step(self, module: nn.Module, step: int = 0) -> None:
        """Clamp every parameter of the plain module in place."""
        for p in module.parameters():
            p.clamp_(-self.cfg.clip, self.cfg.clip)


class BalancedConsistency(Penalty):
    """bCR (Zhao et al. 2021): w_real * E(D(x)-D(T(x)))^2 on real + w_fake * the same on fake, T = DiffAugment
    policies; kind cr is CR (Zhang et al. 2020): the real term only."""

    name = "bcr"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.name = cfg.kind
        self.weight_real = self.weight if cfg.weight_real is None else float(cfg.weight_real)
        fake = self.weight if cfg.weight_fake is None else float(cfg.weight_fake)
        self.weight_fake = 0.0 if cfg.kind == "cr" else fake

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        self._need(ctx, "real", "rand")
        value = self.weight_real * self._term(ctx, ctx.real.detach(), ctx.real_y)
        if self.weight_fake:
            fake, fake_y = fakes(ctx)
            # penalties run outside autocast: fakes made under bf16 autocast are cast back to the reals' dtype
            value = value + self.weight_fake * self._term(ctx, fake.to(ctx.real.dtype), fake_y)
        return value

    def _term(self, ctx: PenaltyContext, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"penalty {self.name}: its transforms ({self.cfg.augment}) need image batches, got shape "
                             f"{list(x.shape)}; remove {self.name} from penalties for non-image data")
        x_t = consistency_transform(x, self.cfg.augment, ctx.rand)
        return (ctx.d_forward(x, y).float() - ctx.d_forward(x_t, y).float()).square().mean()


class PathLength(Penalty):
    """StyleGAN2 path-length regularization: weight * E(||J_w^T n|| - a)^2, a the running mean of ||J_w^T n||."""

    name = "path_length"
    double_backward = True
    net = "G"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.pl_mean = torch.zeros((), dtype=torch.float32)

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        self._need(ctx, "G", "z", "rand")
        G = ctx.G
        if not (hasattr(G, "mapping") and hasattr(G, "synthesis")):
            raise ValueError(f"penalty path_length: {type(G).__name__} has no mapping/synthesis; "
                             "use it with model.arch=stylegan2 or remove it from penalties")
        n = max(1, ctx.z.shape[0] // self.cfg.batch_shrink)
        ws = G.mapping(ctx.z[:n], None if ctx.y is None else ctx.y[:n])
        if not ws.requires_grad:  # a mapping without trainable parameters: differentiate w.r.t. ws itself
            ws = ws.detach().requires_grad_(True)
        img = G.synthesis(ws)
        pixels = math.prod(img.shape[2:]) or 1
        # noise scaled by 1/sqrt(pixels) so that the length does not depend on the resolution (StyleGAN2)
        noise = ctx.rand.randn(n, *img.shape[1:]).to(img) / math.sqrt(pixels)
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        grad = grad.float().reshape(n, -1, grad.shape[-1])  # [N, num_ws, w_dim]
        lengths = grad.square().sum(2).mean(1).sqrt()
        batch_mean = lengths.mean().detach()
        if ctx.reduce_mean is not None:
            batch_mean = ctx.reduce_mean(batch_mean)
        self.pl_mean = self.pl_mean.to(batch_mean.device).lerp(batch_mean, self.cfg.decay)
        value = (lengths - self.pl_mean).square().mean()
        return self.weight * value

    def state_dict(self) -> dict:
        """The running mean path length."""
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the running mean path length."""
        self.pl_mean = torch.as_tensor(state["pl_mean"], dtype=torch.float32).clone()


class Ortho(Penalty):
    """BigGAN orthogonal regularization of G or D (`net`): beta * sum ||W^T W * (1 - I)||_F^2 (gandist.nn.ortho)."""

    name = "ortho"
    net = "G"
    reaches_every_param = False  # weight matrices only: biases and gains get no gradient from it

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.net = getattr(cfg, "net", "g").upper()  # the loop runs a penalty in its net's phase

    def loss(self, ctx: PenaltyContext) -> torch.Tensor:
        self._need(ctx, self.net)
        from gandist.nn.ortho import ortho_penalty  # written with the BigGAN layers; imported when used

        value = ortho_penalty(ctx.G if self.net == "G" else ctx.D, self.weight)
        return value
