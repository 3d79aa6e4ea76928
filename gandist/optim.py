"""Optimizers per net (`optim.g` / `optim.d`): kind, hyper-parameters, kernel implementation, lazy-reg rescaling.

Every kind is a maintained implementation, none is written here: torch's Adam/AdamW/RMSprop/SGD, and AdaBelief
(Zhuang et al. 2020) from pytorch-optimizer (kozistr/pytorch_optimizer). Their state goes through the by-name
checkpoint format (strategies/base.py: optimizer_state_by_name), so a run resumes exactly and across strategies.

Kernel implementation (`optim.impl`): `loop` steps one tensor at a time (torch's foreach=False), `foreach` batches
each op over all tensors of a net (far fewer kernel launches on a GPU with hundreds of parameter tensors), `fused`
does the whole update in one kernel (torch has it for Adam/AdamW/SGD). `auto` takes fused on CUDA where torch has
it, foreach otherwise. All three are deterministic on CPU (no atomics), so CPU runs stay bitwise reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from gandist.configbase import Section

KINDS = ("adam", "adamw", "amsgrad", "adabelief", "rmsprop", "sgd")
FUSED = ("adam", "adamw", "amsgrad", "sgd")  # torch optimizers with a fused kernel (CPU and CUDA)
ADAM_MOMENTS = ("adam", "adamw")  # state exactly {step, exp_avg, exp_avg_sq}: what the ZeRO checkpoints carry
UNROLLED_EXACT_KINDS = ("adam", "adamw", "sgd")  # D optimizers whose update train/unrolled.py writes differentiably


class NetOptimConfig(Section):
    """The optimizer of one network."""

    kind: Literal["adam", "adamw", "amsgrad", "adabelief", "rmsprop", "sgd"] = Field(
        "adam", description="adam (AdamW when weight_decay > 0), adamw, amsgrad, adabelief (pytorch-optimizer), "
        "rmsprop (WGAN's original), sgd.")
    lr: float = Field(2e-4, gt=0, description="Learning rate.")
    betas: tuple[float, float] = Field((0.0, 0.999), description="Adam-family betas, each in [0, 1).")
    eps: float = Field(1e-8, gt=0, description="Epsilon of the adaptive kinds (adam*, adabelief, rmsprop).")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for adam/adamw/adabelief).")
    momentum: float = Field(0.0, ge=0, lt=1, description="Momentum of rmsprop and sgd.")
    alpha: float = Field(0.99, gt=0, lt=1, description="rmsprop's smoothing constant of the squared gradients.")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for b in betas:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"each beta must be in [0, 1), got {list(betas)}")
        return betas


AdamConfig = NetOptimConfig  # the section's name before optim.*.kind existed
Impl = Literal["auto", "foreach", "fused", "loop"]


@dataclass
class OptimSetup:
    """Per-net optimizer settings after lazy-regularization rescaling (StyleGAN2: lr*r, beta**r, r=k/(k+1))."""

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    kind: str = "adam"  # gandist.optim.KINDS
    momentum: float = 0.0
    alpha: float = 0.99
    impl: str = "auto"  # optim.impl; resolved against the device in gandist.optim.build_optimizer


def check_impl(impl: str, kinds: dict[str, str]) -> None:
    """Refuse optim.impl=fused for a kind torch has no fused kernel for (ValueError: config time)."""
    if impl != "fused":
        return
    for net, kind in kinds.items():
        if kind not in FUSED:
            raise ValueError(f"optim.impl=fused: optim.{net}.kind={kind} has no fused kernel (torch fuses "
                             f"{', '.join(FUSED)}); use optim.impl=auto or foreach")


def lazy_optim(cfg: NetOptimConfig, impl: str, penalties, net: str):
    """`net`'s OptimSetup after StyleGAN2's lazy-regularization rescaling (r = k/(k+1)): lr*r, decay rates**r."""
    ks = {p.every for p in penalties if p.net == net and p.every > 1}
    ratio = max(ks) / (max(ks) + 1) if ks else 1.0
    return OptimSetup(lr=cfg.lr * ratio, betas=tuple(b ** ratio for b in cfg.betas), eps=cfg.eps,
                      weight_decay=cfg.weight_decay, kind=cfg.kind, momentum=cfg.momentum,
                      alpha=cfg.alpha ** ratio, impl=impl)


def resolve_impl(impl: str, kind: str, device_type: str) -> str:
    """auto -> fused on CUDA where torch has it, foreach otherwise."""
    if impl == "auto":
        return "fused" if device_type == "cuda" and kind in FUSED else "foreach"
    return impl


def build_optimizer(params, setup, device_type: str = "cpu"):
    """The torch (or pytorch-optimizer) optimizer that `setup` (an OptimSetup) names, over `params`."""
    import torch

    impl = resolve_impl(setup.impl, setup.kind, device_type)
    kernel = {"foreach": impl == "foreach"}
    if setup.kind in FUSED:
        kernel["fused"] = impl == "fused" or None
        if kernel["fused"]:
            kernel["foreach"] = False
    kind, lr, wd = setup.kind, setup.lr, setup.weight_decay
    if kind in ("adam", "adamw", "amsgrad"):
        cls = torch.optim.AdamW if kind == "adamw" or wd > 0 else torch.optim.Adam
        return cls(params, lr=lr, betas=setup.betas, eps=setup.eps, weight_decay=wd, amsgrad=kind == "amsgrad",
                   **kernel)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=setup.alpha, eps=setup.eps, weight_decay=wd,
                                   momentum=setup.momentum, **kernel)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=setup.momentum, weight_decay=wd, **kernel)
    if kind == "adabelief":
        from pytorch_optimizer import AdaBelief

        # AdaBelief's own defaults are the paper's (decoupled decay, no rectification); eps as configured
        return AdaBelief(params, lr=lr, betas=setup.betas, eps=setup.eps, weight_decay=wd, **kernel)
    raise ValueError(f"optim kind {kind!r} is not one of {', '.join(KINDS)}")
