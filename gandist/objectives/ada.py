"""Adaptive discriminator augmentation (Karras et al. 2020, "Training GANs with limited data"), from the paper.

The pipeline (paper section 2.2 and appendix B): every transform is applied to each sample independently with
probability p x its multiplier, so for p < 1 the augmented distribution still identifies the data distribution
(non-leaking). Geometric transforms are composed into one affine matrix per sample and applied in one warp (kornia's
warp_affine, reflect padding) on a 2x bicubic upsampling followed by an antialiased 2x downsampling, so that the
resampling does not alias. Color transforms are composed into one 4x4 matrix in homogeneous RGB.

Every random number comes from a GlobalRandom (world-size invariant); all parameters are drawn whatever p is, so the
random streams do not depend on p. The controller (AdaController) moves p from the sign of D on real images.
"""
from __future__ import annotations

import math

import torch

from gandist.objectives.config import ADA_GROUPS, parse_names
from gandist.randomness import GlobalRandom

GROUPS = ADA_GROUPS
# (transform, multiplier): the paper's default pipeline 'bgc' uses multiplier 1 everywhere
BLIT = ("xflip", "rotate90", "xint")
GEOM = ("scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
XINT_MAX, SCALE_STD, ROTATE_MAX, ANISO_STD, XFRAC_STD = 0.125, 0.2, 1.0, 0.2, 0.125
BRIGHTNESS_STD, CONTRAST_STD, HUE_MAX, SATURATION_STD = 0.2, 0.5, 1.0, 1.0


def parse_pipeline(pipeline: str) -> list[str]:
    """'blit,geom,color' -> the group names; raises ValueError naming an unknown group."""
    return parse_names(pipeline, GROUPS, "ADA pipeline group")


def _u(rand: GlobalRandom, n: int, device, *shape: int) -> torch.Tensor:
    return rand.rand(n, *shape).to(device=device, dtype=torch.float32)


def _n(rand: GlobalRandom, n: int, device, *shape: int) -> torch.Tensor:
    return rand.randn(n, *shape).to(device=device, dtype=torch.float32)


def _eye(n: int, size: int, device) -> torch.Tensor:
    return torch.eye(size, device=device).expand(n, size, size).clone()


def _affine(n, device, a=None, b=None, c=None, d=None, tx=None, ty=None) -> torch.Tensor:
    """[N, 3, 3] matrices [[a, b, tx], [c, d, ty], [0, 0, 1]] (None: the identity's entry)."""
    m = _eye(n, 3, device)
    for (i, j), v in {(0, 0): a, (0, 1): b, (1, 0): c, (1, 1): d, (0, 2): tx, (1, 2): ty}.items():
        if v is not None:
            m[:, i, j] = v
    return m


def _rotation(n, device, theta):
    return _affine(n, device, theta.cos(), -theta.sin(), theta.sin(), theta.cos())


def _gate(rand: GlobalRandom, n: int, device, prob: float) -> torch.Tensor:
    """Per sample: 1 where the transform is applied (probability prob), else 0."""
    return (_u(rand, n, device) < prob).float()


def geometric_matrix(rand: GlobalRandom, n: int, h: int, w: int, p: float, groups: list[str], device) -> torch.Tensor:
    """Per-sample [N, 3, 3] affine maps in normalized coordinates (x, y in [-1, 1]), source -> augmented."""
    m = _eye(n, 3, device)
    if "blit" in groups:
        g = _gate(rand, n, device, p)
        flip = (_u(rand, n, device) < 0.5).float() * g
        m = m @ _affine(n, device, a=1 - 2 * flip)
        g = _gate(rand, n, device, p)
        quarter = (_u(rand, n, device) * 4).floor().clamp_max(3) * g
        m = m @ _rotation(n, device, quarter * math.pi / 2)
        g = _gate(rand, n, device, p)
        t = (_u(rand, n, device, 2) * 2 - 1) * XINT_MAX * g[:, None]
        # whole pixels: a shift of k pixels is 2k/side in normalized coordinates
        tx, ty = (t[:, 0] * w).round() * 2 / w, (t[:, 1] * h).round() * 2 / h
        m = m @ _affine(n, device, tx=tx, ty=ty)
    if "geom" in groups:
        g = _gate(rand, n, device, p)
        s = torch.exp2(_n(rand, n, device) * SCALE_STD * g)
        m = m @ _affine(n, device, a=s, d=s)
        # rotation is split in two (before and after the anisotropic scale) with probability 1 - sqrt(1 - p) each,
        # so that some rotation happens with probability p (paper appendix B)
        p_rot = 1 - math.sqrt(max(0.0, 1 - min(p, 1.0)))
        g = _gate(rand, n, device, p_rot)
        m = m @ _rotation(n, device, (_u(rand, n, device) * 2 - 1) * math.pi * ROTATE_MAX * g)
        g = _gate(rand, n, device, p)
        s = torch.exp2(_n(rand, n, device) * ANISO_STD * g)
        m = m @ _affine(n, device, a=s, d=1 / s)
        g = _gate(rand, n, device, p_rot)
        m = m @ _rotation(n, device, (_u(rand, n, device) * 2 - 1) * math.pi * ROTATE_MAX * g)
        g = _gate(rand, n, device, p)
        t = _n(rand, n, device, 2) * XFRAC_STD * g[:, None]
        m = m @ _affine(n, device, tx=t[:, 0] * 2, ty=t[:, 1] * 2)
    return m


def color_matrix(rand: GlobalRandom, n: int, channels: int, p: float, device) -> torch.Tensor:
    """Per-sample [N, 4, 4] maps of homogeneous RGB (a single channel uses the luma part only)."""
    v = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)  # the luma axis
    vv = torch.outer(v, v)
    m = _eye(n, 4, device)
    g = _gate(rand, n, device, p)
    b = _n(rand, n, device) * BRIGHTNESS_STD * g
    t = _eye(n, 4, device)
    t[:, :3, 3] = b[:, None]
    m = t @ m
    g = _gate(rand, n, device, p)
    c = torch.exp2(_n(rand, n, device) * CONTRAST_STD * g)
    t = _eye(n, 4, device)
    t[:, :3, :3] *= c[:, None, None]
    m = t @ m
    g = _gate(rand, n, device, p)
    flip = (_u(rand, n, device) < 0.5).float() * g
    m = (_eye(n, 4, device) - 2 * vv * flip[:, None, None]) @ m
    g = _gate(rand, n, device, p)
    theta = (_u(rand, n, device) * 2 - 1) * math.pi * HUE_MAX * g
    g_sat = _gate(rand, n, device, p)
    s = torch.exp2(_n(rand, n, device) * SATURATION_STD * g_sat)
    if channels == 3:  # hue and saturation act off the luma axis, which one channel does not have
        m = _rotation_about_luma(theta) @ m
        m = (vv + (_eye(n, 4, device) - vv) * s[:, None, None]) @ m
    return m


def _rotation_about_luma(theta: torch.Tensor) -> torch.Tensor:
    """Rodrigues' rotation by theta about the luma axis (1, 1, 1)/sqrt(3), as [N, 4, 4]."""
    a = 1 / math.sqrt(3)  # v's entries: the cross-product matrix of the luma axis
    k = torch.tensor([[0.0, -a, a], [a, 0.0, -a], [-a, a, 0.0]], device=theta.device)
    n = theta.shape[0]
    r = (torch.eye(3, device=theta.device) + theta.sin()[:, None, None] * k
         + (1 - theta.cos())[:, None, None] * (k @ k))
    out = _eye(n, 4, theta.device)
    out[:, :3, :3] = r
    return out


def warp(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply normalized-coordinate affine maps to [N, C, H, W] with reflect padding, at 2x to avoid aliasing."""
    import kornia  # the differentiable warp; imported when ADA runs

    n, _, h, w = x.shape
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    H, W = 2 * h, 2 * w
    # normalized -> pixel coordinates of the 2x image (pixel centres at -1 + (2i + 1)/W)
    to_px = torch.tensor([[W / 2, 0, (W - 1) / 2], [0, H / 2, (H - 1) / 2], [0, 0, 1]], device=x.device,
                         dtype=torch.float32)
    px = to_px @ m @ torch.linalg.inv(to_px)
    out = kornia.geometry.transform.warp_affine(big.float(), px[:, :2, :], (H, W), mode="bilinear",
                                                padding_mode="reflection", align_corners=True)
    return kornia.geometry.transform.rescale(out, 0.5, antialias=True).to(x.dtype)


def ada_augment(x: torch.Tensor, p: float, groups: list[str], rand: GlobalRandom) -> torch.Tensor:
    """The ADA pipeline on an image batch [N, C, H, W] in [-1, 1] at strength p; differentiable in x.

    Samples whose every transform was skipped pass through unchanged (not resampled), so p = 0 is the identity.
    """
    if x.dim() != 4:
        raise ValueError(f"augment.ada needs image batches [N, C, H, W], got shape {list(x.shape)}; "
                         "remove augment.ada for non-image data")
    n, c, h, w = x.shape
    dev = x.device
    if "blit" in groups or "geom" in groups:
        m = geometric_matrix(rand, n, h, w, p, groups, dev)
        moved = (m - torch.eye(3, device=dev)).abs().flatten(1).amax(1) > 0
        if bool(moved.any()):
            x = torch.where(moved[:, None, None, None], warp(x, m), x)
    if "color" in groups:
        m = color_matrix(rand, n, c, p, dev).to(x.dtype)
        if c == 3:
            flat = x.reshape(n, 3, h * w)
            x = (m[:, :3, :3] @ flat + m[:, :3, 3:]).reshape(n, c, h, w)
        else:  # one channel: luma-axis gain (contrast, luma flip) and offset (brightness) on every channel
            gain = (m[:, :3, :3].sum(-1).mean(-1))[:, None, None, None]
            x = x * gain + m[:, 0, 3][:, None, None, None]
    return x


class AdaController:
    """p and its controller: r_t = E[sign D(real)] over the global batch moves p every `interval` steps.

    observe() accumulates this rank's sign sum and count; end_step() all-reduces them (so every rank holds the
    same totals and the same p) and, every `interval` steps, measures r_t and moves p by sign(r_t - target) x
    batch x interval / (kimg x 1000), clamped to [0, 1]. With target None p stays fixed (r_t is still measured).
    The whole state is in state_dict().
    """

    def __init__(self, cfg, batch_size: int):
        self.cfg, self.batch_size = cfg, batch_size
        self.groups = parse_pipeline(cfg.pipeline)
        self.p = float(cfg.p)
        self.rt = 0.0  # the r_t of the last adjustment
        self.sign_sum, self.count, self.steps = 0.0, 0.0, 0
        self._local = torch.zeros(2, dtype=torch.float64)

    def augment(self, x: torch.Tensor, rand: GlobalRandom) -> torch.Tensor:
        return ada_augment(x, self.p, self.groups, rand)

    def observe(self, real_logits: torch.Tensor) -> None:
        """Add one micro-batch's D(real) logits (this rank's)."""
        # on the logits' device: no host sync per micro-batch (end_step reads the totals once a step)
        logits = real_logits.detach().flatten().double()
        count = torch.full((), float(logits.numel()), dtype=torch.float64, device=logits.device)
        self._local = self._local.to(logits.device) + torch.stack([logits.sign().sum(), count])

    def end_step(self, all_reduce_sum) -> None:
        """After each G step: add the ranks' totals, and adjust p every `interval` steps."""
        total = all_reduce_sum(self._local.clone())
        self._local.zero_()
        self.sign_sum += float(total[0])
        self.count += float(total[1])
        self.steps += 1
        if self.steps % self.cfg.interval or self.count == 0:
            return
        self.rt = self.sign_sum / self.count
        self.sign_sum, self.count = 0.0, 0.0
        if self.cfg.target is None:  # a fixed p: r_t is still measured (a baseline's overfitting curve)
            return
        adjust = math.copysign(1.0, self.rt - self.cfg.target) if self.rt != self.cfg.target else 0.0
        self.p = min(1.0, max(0.0, self.p + adjust * self.batch_size * self.cfg.interval / (self.cfg.kimg * 1000)))

    def state_dict(self) -> dict:
        return {"p": self.p, "rt": self.rt, "sign_sum": self.sign_sum, "count": self.count, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.rt = float(state["p"]), float(state["rt"])
        self.sign_sum, self.count, self.steps = float(state["sign_sum"]), float(state["count"]), int(state["steps"])
