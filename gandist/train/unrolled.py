"""Unrolled GAN (Metz et al. 2017, arXiv:1611.02163): G's loss is taken against D after k look-ahead D updates.

`optim.unrolled_steps: k` (0: off). Before the G phase, D takes k extra updates of its adversarial loss (ACGAN's class
term included; no penalties, whose own state, e.g. LeCam's averages, must not move), each on the step's last real
batch (as the reference implementation does) with fresh latents from the stream `unroll{j}` of the step's
world-size-invariant randomness. G's loss is then taken against the updated D, and after G's step D is exactly as the
D phases left it: weights, optimizer moments, and buffers (spectral-norm u/v/sigma and BN running statistics, which
the look-ahead forwards and G's forward through the look-ahead D update). G's buffers, which the look-ahead fakes
move, are put back before G's phase, so that G's phase sees and updates them as it does without unrolling.

- `exact` (the paper's): the updates are functional (torch.func.functional_call on D's parameters; Adam/AdamW/SGD,
  gradient clipping included, written out on the optimizer's own moments and hyper-parameters with create_graph=True),
  so G's gradient flows through them into the fakes of every look-ahead batch. Their gradients are averaged over
  ranks by strategy.grad_mean, the differentiable form of the all-reduce a real step does.
- `copy`: the updates are D's real optimizer steps (strategy.backward / step: reduced across ranks like any D step),
  undone afterwards by strategy.restore; G sees the updated D but not how it got there. Cheaper: first order only.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch.func import functional_call

from gandist.objectives import losses
from gandist.optim import UNROLLED_EXACT_KINDS
from gandist.train.phases import d_forward, latents, micro_slice, step_random

EXACT_KINDS = UNROLLED_EXACT_KINDS  # the optimizers whose update the exact form writes out differentiably


def look_ahead(tr, phase, real, real_y):
    """The context a phase runs in: for the G phase with optim.unrolled_steps > 0, D after the look-ahead updates."""
    k = tr.cfg.optim.unrolled_steps
    if k == 0 or phase.name != "G":
        return nullcontext()
    return _unrolled(tr, k, real, real_y)


@contextmanager
def _unrolled(tr, k: int, real, real_y):
    s = tr.strategy
    G, D = s.module("G"), s.module("D")
    g_buffers = _buffers(G)  # the look-ahead fakes move G's BN statistics (and SN vectors): put back before G's phase
    if tr.cfg.optim.unrolled_form == "copy":
        snapshot = s.snapshot("D")
        try:
            for j in range(k):
                _copy_step(tr, j, real, real_y)
            _swap_in_buffers(G, g_buffers)
            yield
        finally:
            s.restore("D", snapshot)
        return
    d_buffers = _buffers(D)
    try:
        params = exact_params(tr, k, real, real_y)
        _swap_in_buffers(G, g_buffers)  # the look-ahead graph saved G's old buffers (BN's backward reads them)
        tr.d_look_ahead = _functional_d(D, params)
        yield
    finally:
        tr.d_look_ahead = None
        _restore_buffers(D, d_buffers)


def _buffers(module) -> dict:
    return {n: b.detach().clone() for n, b in module.named_buffers()}


def _swap_in_buffers(module, saved: dict) -> None:
    """The saved copies become the module's buffers (the old tensors stay untouched for a graph that holds them)."""
    for name, value in saved.items():
        owner, _, leaf = name.rpartition(".")
        module.get_submodule(owner)._buffers[leaf] = value


@torch.no_grad()
def _restore_buffers(module, saved: dict) -> None:
    for n, b in module.named_buffers():
        b.copy_(saved[n])


def _functional_d(D, params: dict):
    """D's forward with `params` in place of its trainable parameters (its buffers stay the module's)."""
    return lambda x, y, **kwargs: functional_call(D, params, (x, y), kwargs)


def look_ahead_d_loss(tr, real, real_y, fake, fake_y, rand) -> torch.Tensor:
    """D's adversarial loss (plus ACGAN's class term) through d_forward: the input pipeline of the D phase."""
    cfg, s = tr.cfg, tr.strategy
    if tr.aux:
        real_logits, real_class = d_forward(tr, real, real_y, rand, with_class=True)
    else:
        real_logits, real_class = d_forward(tr, real, real_y, rand), None
    fake_logits = d_forward(tr, fake, fake_y, rand)
    loss = losses.d_loss(cfg.loss, real_logits.float(), fake_logits.float(), s.batch_mean)
    if real_class is not None:
        loss = loss + losses.aux_class_loss(cfg.loss, real_class, real_y)
    return loss


def _copy_step(tr, j: int, real, real_y) -> None:
    """One real D step (accumulation micro-batches, the strategy's reduce, clip and optimizer step)."""
    s, n = tr.strategy, tr.cfg.optim.accumulation
    with s.phase("D"):
        for i in range(n):
            rand = step_random(tr, f"unroll{j}", i)
            x, y = micro_slice(tr, real, i), micro_slice(tr, real_y, i)
            z, y_fake = latents(tr, rand, tr.micro)
            with s.autocast():
                with torch.no_grad():
                    fake = s.net("G")(z, y_fake)
                loss = look_ahead_d_loss(tr, x, y, fake, y_fake, rand)
            s.backward(loss, "D", last_micro=i == n - 1)
    s.step("D")  # its stats are not D's: the watchdog and telemetry see the D phases' steps only


def exact_params(tr, k: int, real, real_y) -> dict:
    """D's trainable parameters after k differentiable updates (a graph back to G through every look-ahead fake)."""
    s, cfg = tr.strategy, tr.cfg
    D, optimizer = s.module("D"), s.torch_optimizer("D")
    trainable = {id(p) for p in s.trainable["D"]}
    named = [(n, p) for n, p in D.named_parameters() if id(p) in trainable]
    params = {n: p.detach().requires_grad_() for n, p in named}
    update = DifferentiableUpdate(optimizer, [p for _, p in named], cfg.optim.d.kind, cfg.optim.grad_clip)
    for j in range(k):  # accumulation is 1 (config validation): one micro-batch per update
        rand = step_random(tr, f"unroll{j}", 0)
        x, y = micro_slice(tr, real, 0), micro_slice(tr, real_y, 0)
        z, y_fake = latents(tr, rand, tr.micro)
        tr.d_look_ahead = _functional_d(D, params)
        with s.autocast():
            fake = s.net("G")(z, y_fake)
            loss = look_ahead_d_loss(tr, x, y, fake, y_fake, rand)
        values = list(params.values())
        grads = torch.autograd.grad(loss, values, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(values, grads)]  # as zero_fill_missing_grads
        params = dict(zip(params, update(values, s.grad_mean(grads))))
    tr.d_look_ahead = None
    return params


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite derivative at 0 (Adam's second moment of a parameter that never got a gradient)."""
    return torch.where(v > 0, v.clamp_min(1e-30).sqrt(), torch.zeros_like(v))


class DifferentiableUpdate:
    """The update rule of a torch Adam/AdamW/SGD, on its current moments and hyper-parameters, as a function of the
    parameters and gradients that autograd differentiates (torch.optim's in-place kernels cannot be)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list, kind: str, grad_clip: float = 0.0):
        if kind not in EXACT_KINDS:
            raise ValueError(f"the exact unrolled update supports {', '.join(EXACT_KINDS)}, not {kind}")
        group = optimizer.param_groups[0]
        self.kind, self.grad_clip, self.group = kind, grad_clip, group
        self.decoupled = isinstance(optimizer, torch.optim.AdamW)
        states = [optimizer.state.get(p, {}) for p in params]
        if kind == "sgd":
            self.buf = [st.get("momentum_buffer") for st in states]
        else:
            self.m = [st["exp_avg"].detach() if "exp_avg" in st else torch.zeros_like(p) for st, p in
                      zip(states, params)]
            self.v = [st["exp_avg_sq"].detach() if "exp_avg_sq" in st else torch.zeros_like(p) for st, p in
                      zip(states, params)]
            self.t = float(states[0]["step"]) if states and "step" in states[0] else 0.0

    def __call__(self, params: list, grads: list) -> list:
        """The next parameters (one step), keeping the advanced moments for the next call."""
        if self.grad_clip > 0:  # as torch.nn.utils.clip_grad_norm_
            total = torch.stack([g.float().pow(2).sum() for g in grads]).sum().sqrt()
            coef = torch.clamp(self.grad_clip / (total + 1e-6), max=1.0)
            grads = [g * coef.to(g.dtype) for g in grads]
        g_ = self.group
        lr, wd = g_["lr"], g_["weight_decay"]
        if self.kind == "sgd":
            momentum, out = g_["momentum"], []
            for i, (p, g) in enumerate(zip(params, grads)):
                g = g + wd * p if wd else g
                if momentum:
                    g = g if self.buf[i] is None else momentum * self.buf[i] + g
                    self.buf[i] = g
                out.append(p - lr * g)
            return out
        beta1, beta2 = g_["betas"]
        eps = g_["eps"]
        self.t += 1
        step_size = lr / (1 - beta1 ** self.t)
        bias2_sqrt = (1 - beta2 ** self.t) ** 0.5
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if wd and self.decoupled:
                p = p * (1 - lr * wd)
            elif wd:
                g = g + wd * p
            self.m[i] = self.m[i] + (g - self.m[i]) * (1 - beta1)  # torch's lerp
            self.v[i] = self.v[i] * beta2 + g * g * (1 - beta2)
            out.append(p - step_size * self.m[i] / (_sqrt(self.v[i]) / bias2_sqrt + eps))
        return out
