"""One process, one device: the reference Strategy (DDP subclasses it; ZeRO mirrors its semantics)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from gandist.errors import UserError
from gandist.strategies.base import (NETS, OptimSetup, StepStats, Strategy, TorchOptimizerState, build_adam,
                                     layer_grad_norms, zero_fill_missing_grads)


def pick_device(cfg, local_rank: int = 0) -> torch.device:
    """cuda:local_rank when asked for (or auto and available), else cpu."""
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA device is visible (use auto or cpu)")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA, fp16 autocast on CUDA, nothing when amp is off."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class SingleStrategy(TorchOptimizerState, Strategy):
    """Plain modules and torch Adam; gradient accumulation by scaling each micro-batch loss by 1/n."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = pick_device(cfg, self.local_rank)
        if cfg.train.amp == "fp16" and self.device.type != "cuda":
            raise UserError("train.amp: fp16 needs a CUDA device (GradScaler); on CPU use bf16 or off")
        self.modules: dict[str, nn.Module] = {}
        self.wrapped: dict[str, Any] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, Any] = {}
        self.lr_scale = {n: 1.0 for n in NETS}
        self.base_lr: dict[str, float] = {}

    # -- set-up ---------------------------------------------------------------------------------------------
    def _wrap(self, name: str, module: nn.Module) -> Any:
        """Hook for subclasses (DDP)."""
        return module

    def setup(self, G, D, optim: dict[str, OptimSetup], accumulation: int, grad_clip: float, amp: str) -> None:
        self.accumulation, self.grad_clip, self.amp = accumulation, grad_clip, amp
        for name, module in (("G", G), ("D", D)):
            module.to(self.device)
            self.modules[name] = module
            self.optimizers[name] = build_adam(module.parameters(), optim[name])
            self.base_lr[name] = optim[name].lr
            self.scalers[name] = torch.amp.GradScaler("cuda") if amp == "fp16" else None
            self.wrapped[name] = self._wrap(name, module)

    def net(self, name: str) -> Any:
        return self.wrapped[name]

    def module(self, name: str) -> nn.Module:
        return self.modules[name]

    # -- phases ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        for other, module in self.modules.items():
            module.requires_grad_(other == name)
        try:
            yield
        finally:
            for module in self.modules.values():
                module.requires_grad_(True)

    def backward(self, loss: torch.Tensor, name: str, last_micro: bool = True) -> None:
        loss = loss / self.accumulation
        scaler = self.scalers[name]
        (scaler.scale(loss) if scaler else loss).backward()

    def step(self, name: str) -> StepStats:
        optimizer, scaler, module = self.optimizers[name], self.scalers[name], self.modules[name]
        zero_fill_missing_grads(p for p in module.parameters() if p.requires_grad)
        if scaler:
            scaler.unscale_(optimizer)
        norm, layers, nonfinite = layer_grad_norms(module)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip, foreach=False)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return StepStats(grad_norm=norm, layer_grad_norms=layers, nonfinite=nonfinite)

    def zero_grad(self, name: str) -> None:
        self.optimizers[name].zero_grad(set_to_none=True)

    def set_lr_scale(self, name: str, scale: float) -> None:
        self.lr_scale[name] = scale
        for group in self.optimizers[name].param_groups:
            group["lr"] = self.base_lr[name] * scale

    def current_lr(self, name: str) -> float:
        return self.optimizers[name].param_groups[0]["lr"]

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.amp)
