"""The training step as data: the phase list (Dmain, Dreg, Gmain, Greg), built once, and the one body that runs each.

It exists so that the loop has one phase body and one penalty sum instead of three hand-written phase methods.
As in stylegan2-ada-pytorch, a penalty with `every: k` runs in its net's reg phase every k steps with its weight
multiplied by k, and that net's Adam lr and betas are rescaled by r = k/(k+1) (gandist.optim.lazy_optim). A phase's `objective`
is its main loss (D's or G's adversarial loss; none in a reg phase) and the fields its penalties see.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from gandist.data.base import micro_batch_start
from gandist.objectives import losses
from gandist.objectives.penalties import PenaltyContext
from gandist.randomness import GlobalRandom, stream_seed


# -- what a phase draws and feeds D: the same on every phase --------------------------------------------------------
def step_random(tr, tag: str, micro: int) -> GlobalRandom:
    """World-size-invariant draws for micro-batch `micro` of this rank's part of the global batch."""
    # micro-batch-major, as the data sources lay it out: global micro-batch i is the same samples and noise
    # whatever the world size
    cfg, s = tr.cfg, tr.strategy
    offset = micro_batch_start(cfg.train.batch_size, s.rank, s.world_size, cfg.optim.accumulation, micro)
    return GlobalRandom(stream_seed(cfg.seed, tr.noise_epoch), tr.step, tag, offset, cfg.train.batch_size, s.device)


def latents(tr, rand: GlobalRandom, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    G = tr.strategy.module("G")
    z = rand.randn(n, G.z_dim)
    y = None
    if G.num_classes:
        y = (rand.rand(n) * G.num_classes).long().clamp_max(G.num_classes - 1)
    return z, y


def d_forward(tr, x: torch.Tensor, y, rand: GlobalRandom, with_class: bool = False, with_pixels: bool = False):
    """D's logits after augmentation, instance noise and packing (the same pipeline for real and fake);
    with_class (an ACGAN D): (logits, class logits); with_pixels (a U-Net D): (logits, per-pixel logits)."""
    if isinstance(x, list):  # MSG-GAN's pyramid from G: config validation refused the augmentations
        return tr.strategy.net("D")(x, y)
    aug = tr.cfg.augment
    if tr.ada is not None:  # before DiffAugment, noise and packing; R1 differentiates w.r.t. x before it
        x = tr.ada.augment(x, rand)
    if aug.diffaugment or aug.instance_noise.std > 0 or aug.pack > 1:
        from gandist.objectives.augment import prepare_d_input

        x, y = prepare_d_input(x, y, aug, tr.step, rand)
    if tr.cfg.train.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    D = tr.strategy.net("D") if tr.d_look_ahead is None else tr.d_look_ahead  # unrolled GAN: train/unrolled.py
    if with_pixels:
        return D(x, y, return_pixels=True)
    return D(x, y, return_class=True) if with_class else D(x, y)


def generate(tr, z: torch.Tensor, y):
    """G's samples as D judges them: an image batch, or (MSG-GAN) the list of G's images at every scale."""
    if getattr(tr.strategy.module("G"), "pyramid_output", False):
        return tr.strategy.net("G")(z, y, pyramid=True)
    return tr.strategy.net("G")(z, y)


def finest(x):
    """The full-resolution image of G's output (the last scale of an MSG-GAN pyramid)."""
    return x[-1] if isinstance(x, list) else x


def pixel_d(tr) -> bool:
    """Whether D has a per-pixel output (U-Net D): the phases then add the per-pixel loss."""
    return getattr(tr.strategy.module("D"), "pixel_output", False)


def d_heads(tr, x: torch.Tensor, y, rand: GlobalRandom, with_class: bool = False):
    """(logits, class logits or None, per-pixel logits [N, H, W] or None) of D on x: what the D's heads give."""
    if pixel_d(tr):
        logits, pixels = d_forward(tr, x, y, rand, with_pixels=True)
        return logits, None, pixels
    if with_class:
        return (*d_forward(tr, x, y, rand, with_class=True), None)
    return d_forward(tr, x, y, rand), None, None


def pixel_term(tr, sig, net: str, term: torch.Tensor) -> torch.Tensor:
    """U-Net D: model.pixel_weight x the per-pixel adversarial loss (logged as NET/pixel)."""
    term = tr.cfg.model.pixel_weight * term
    sig.losses[f"{net}/pixel"] = term.detach()
    return term


def aux_term(tr, sig, net: str, class_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ACGAN: loss.aux_weight x cross-entropy of D's class head against y (logged as NET/aux)."""
    term = losses.aux_class_loss(tr.cfg.loss, class_logits, y)
    sig.losses[f"{net}/aux"] = term.detach()  # a device tensor: Signals moves it to the host once a step
    return term


def penalty_context(tr, rand: GlobalRandom, **fields) -> PenaltyContext:
    """What penalties see: D through the input pipeline, this step's randomness, a mean over ranks."""
    return PenaltyContext(tr.step, d_forward=lambda a, b: d_forward(tr, a, b, rand), rand=rand,
                          reduce_mean=lambda t: tr.strategy.all_reduce(t.clone(), "mean"), **fields)


def micro_slice(tr, t: torch.Tensor | None, i: int):
    return None if t is None else t[i * tr.micro:(i + 1) * tr.micro].to(tr.strategy.device)


@dataclass
class Micro:
    """One micro-batch as a phase sees it: real samples, latents, this micro-batch's randomness."""

    real: torch.Tensor | None
    real_y: torch.Tensor | None
    z: torch.Tensor
    y: torch.Tensor | None
    rand: object


def d_main(tr, m: Micro, sig) -> tuple[torch.Tensor, dict]:
    """D's adversarial loss on real and (no-grad) fake samples; its penalties see both."""
    s = tr.strategy
    with s.autocast():
        with torch.no_grad():
            fake = generate(tr, m.z, m.y)
        real_logits, real_class, real_pixels = d_heads(tr, m.real, m.real_y, m.rand, with_class=tr.aux)
        fake_logits, _, fake_pixels = d_heads(tr, fake, m.y, m.rand)
        loss = losses.d_loss(tr.cfg.loss, real_logits.float(), fake_logits.float(), s.batch_mean)
        if real_class is not None:  # ACGAN: D learns the real labels
            loss = loss + aux_term(tr, sig, "D", real_class, m.real_y)
        if real_pixels is not None:  # U-Net D: the same loss on every pixel's logit, averaged
            loss = loss + pixel_term(tr, sig, "D", losses.d_loss(
                tr.cfg.loss, real_pixels.float().flatten(), fake_pixels.float().flatten(), s.batch_mean))
    sig.d_real, sig.d_fake = real_logits.detach().mean(), fake_logits.detach().mean()  # device tensors
    if tr.ada is not None:
        tr.ada.observe(real_logits)
    # LeCam reads the logits (graph kept); zCR draws perturbed fakes from z through G
    fields = {"D": s.module("D"), "real": m.real, "real_y": m.real_y, "fake": finest(fake).detach(), "fake_y": m.y,
              "real_logits": real_logits, "fake_logits": fake_logits, "z": m.z, "y": m.y, "g_forward": s.net("G")}
    if real_pixels is not None:  # CutMix (gandist/objectives/cutmix.py) reads them
        fields.update(real_pixels=real_pixels, fake_pixels=fake_pixels,
                      d_pixels=lambda x, y: d_forward(tr, x, y, m.rand, with_pixels=True),
                      d_terms=lambda t: losses.d_terms(tr.cfg.loss, t))
    return loss, fields


def g_main(tr, m: Micro, sig) -> tuple[torch.Tensor, dict]:
    """G's adversarial loss (with D on real samples where the loss needs it, e.g. relativistic)."""
    s = tr.strategy
    with s.autocast():
        fake = generate(tr, m.z, m.y)
        fake_logits, fake_class, fake_pixels = d_heads(tr, fake, m.y, m.rand, with_class=tr.aux)
        real_logits = real_pixels = None
        if losses.needs_real_in_g_phase(tr.cfg.loss):
            real_logits, _, real_pixels = d_heads(tr, m.real, m.real_y, m.rand)
            real_logits = real_logits.float()
        if tr.cfg.loss.topk is not None:  # k chosen over the global batch: world-size invariant
            gathered = s.all_gather_object(fake_logits.detach().float().cpu())
            loss = losses.topk_g_loss(tr.cfg.loss, fake_logits.float(), gathered, s.rank, tr.images_seen)
        else:
            loss = losses.g_loss(tr.cfg.loss, fake_logits.float(), real_logits, s.batch_mean)
        if fake_class is not None:  # ACGAN: G makes samples D classifies as the requested class
            loss = loss + aux_term(tr, sig, "G", fake_class, m.y)
        if fake_pixels is not None:  # U-Net D: G's loss on every pixel's logit too
            loss = loss + pixel_term(tr, sig, "G", losses.g_loss(
                tr.cfg.loss, fake_pixels.float().flatten(),
                None if real_pixels is None else real_pixels.float().flatten(), s.batch_mean))
    return loss, {"g_forward": s.net("G"), "D": s.module("D"), "z": m.z, "y": m.y}


def reg_only(tr, m: Micro, sig) -> tuple[float, dict]:
    """A lazy-regularization phase: no adversarial loss, every field a penalty of either net may use."""
    s = tr.strategy
    return 0.0, {"g_forward": s.net("G"), "G": s.module("G"), "D": s.module("D"), "real": m.real,
                 "real_y": m.real_y, "z": m.z, "y": m.y}


@dataclass
class Phase:
    """One entry of the step: `name` (seconds and grad-norm keys), `net` stepped, `interval` (1, or the lazy k of
    each penalty), its penalties, its objective. `main`: an adversarial phase (records the net's loss and grad norm,
    runs the penalties' after_step); otherwise a reg phase, due when any of its penalties is (step % every == 0)."""

    name: str
    net: str
    penalties: list
    objective: Callable
    main: bool
    repeat: int = 1  # Dmain: optim.d_steps times per step, each on a new batch (the others reuse the last)

    def tag(self, k: int) -> str:
        """The randomness stream of its k-th run this step."""
        return f"{self.name}{k}" if self.name == "D" else self.name

    def due(self, step: int) -> list:
        """The penalties due at `step` (main phases: all of them, every step)."""
        return self.penalties if self.main else [p for p in self.penalties if step % p.every == 0]

    def add_penalties(self, loss, ctx, due: list, sig):
        """The penalty sum, written once: each term is weight x lazy k x its mitigation scale, added in order."""
        for p in due:
            k = 1 if self.main else p.every
            term = p.loss(ctx) * k * p.weight_scale
            sig.losses[f"{self.net}/{p.name}"] = term.detach().double() / k
            loss = loss + term
        return loss


def build_phases(penalties: list, d_steps: int) -> list[Phase]:
    """Dmain (run optim.d_steps times), Dreg, Gmain, Greg: each penalty in its net's main or reg phase."""
    def of(net: str, lazy: bool) -> list:
        return [p for p in penalties if p.net == net and (p.every > 1) == lazy]

    return [Phase("D", "D", of("D", False), d_main, True, d_steps), Phase("Dreg", "D", of("D", True), reg_only, False),
            Phase("G", "G", of("G", False), g_main, True), Phase("Greg", "G", of("G", True), reg_only, False)]


def run_phase(tr, phase: Phase, tag: str, real, real_y, sig) -> None:
    """One phase: accumulation micro-batches of objective + penalties, backward, one optimizer step of its net."""
    due = phase.due(tr.step)
    if not due and not phase.main:
        return
    s, n = tr.strategy, tr.cfg.optim.accumulation
    # under ZeRO-3 a G reg phase builds (and backpropagates) its graph on the gathered weights; G's main-phase
    # penalties read the gathered G; D is never partitioned apart from its optimizer
    gather_all = phase.net == "G" and not phase.main
    with s.phase(phase.net):
        for i in range(n):
            rand = step_random(tr, tag, i)
            x, y = micro_slice(tr, real, i), micro_slice(tr, real_y, i)
            z, y_fake = latents(tr, rand, tr.micro)
            with s.gathered("G") if gather_all else nullcontext():
                loss, fields = phase.objective(tr, Micro(x, y, z, y_fake, rand), sig)
                if phase.main and phase.net == "D":
                    loss = phase.add_penalties(loss, penalty_context(tr, rand, **fields), due, sig)
                elif phase.main and due:
                    with s.gathered("G") as G_full:
                        loss = phase.add_penalties(loss, penalty_context(tr, rand, G=G_full, **fields), due, sig)
                elif not phase.main:
                    ctx = penalty_context(tr, rand, **fields)
                    with s.autocast():
                        loss = phase.add_penalties(loss, ctx, due, sig)
                s.backward(loss, phase.net, last_micro=i == n - 1)
            if phase.main:
                sig.losses[phase.net] = loss.detach()
    stats = s.step(phase.net)
    if phase.main:
        sig.grad_norm[phase.net] = stats.grad_norm
        sig.layer_grad_norm.update({f"{phase.net}/{k}": v for k, v in stats.layer_grad_norms.items()})
        for p in tr.penalties:  # every penalty of the net, lazy ones included: its weights just changed
            if p.net == phase.net:
                p.after_step(s.module(phase.net), tr.step)
    sig.nonfinite += stats.nonfinite
