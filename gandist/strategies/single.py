"""One process, one device: the reference Strategy (ddp and zero mirror its semantics; collectives are identities)."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from gandist.strategies.base import (NETS, OptimSetup, Strategy, TorchOptimizerState, build_adam, check_precision,
                                     check_reduce_op, pick_device)
from gandist.strategies.net_state import NetStateRestore


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA, fp16 autocast on CUDA, nothing when amp is off."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class SingleStrategy(NetStateRestore, TorchOptimizerState, Strategy):
    """Plain modules and torch Adam; gradient accumulation by scaling each micro-batch loss by 1/n."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = pick_device(cfg.train.device, self.local_rank)
        check_precision(cfg.train.amp, self.device)
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, Any] = {}
        self.lr_scale = {n: 1.0 for n in NETS}
        self.base_lr: dict[str, float] = {}

    def setup(self, G, D, optim: dict[str, OptimSetup], accumulation: int, grad_clip: float, amp: str) -> None:
        self.accumulation, self.grad_clip, self.amp = accumulation, grad_clip, amp
        self._remember_trainable(G, D)
        for name in NETS:
            self.optimizers[name] = build_adam(self.trainable[name], optim[name], self.device)
            self.base_lr[name] = optim[name].lr
            self.scalers[name] = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self._compile_nets(self.cfg.train)

    # -- collectives: one process, so each is the identity ----------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        check_reduce_op(op)
        return tensor

    def batch_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.mean()

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather_object(self, obj: Any) -> list:
        return [obj]

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.amp)
