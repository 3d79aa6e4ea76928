"""Data parallel over N processes: every rank holds G and D whole; gradients are averaged once per optimizer step.

Why not wrap the nets in torch DistributedDataParallel: DDP decides at *forward* time whether the next backward
all-reduces, but the loop only knows at backward time which micro-batch is the last one (`last_micro`); a lazy
regularization phase uses a subset of the parameters (path length: G's synthesis only), which DDP only tolerates
with `find_unused_parameters=True`; and a D forward inside the G phase would arm D's reducer for a backward that
never reduces. StyleGAN3 (NVlabs/stylegan3, training_loop.py) dropped DDP for the same reasons and all-reduces one
flat gradient buffer per phase; this does the same:
- the phase's net only: the other net is frozen, so D's gradients are never reduced during the G phase;
- once per optimizer step, after the last micro-batch (no per-micro-batch all-reduce, no `no_sync` bookkeeping);
- only parameters that got a gradient (identical on every rank: same graph), so no unused-parameter search.
Parameters and buffers are broadcast from rank 0 at setup; buffers (SN u/v/sigma, BN running stats) again after
each step, so every rank agrees even with plain (per-rank) BatchNorm, as DDP's broadcast_buffers would do.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from gandist.strategies.base import (NETS, OptimSetup, StepStats, Strategy, TorchOptimizerState, build_adam,
                                     layer_grad_norms, zero_fill_missing_grads)
from gandist.strategies.dist_env import DistributedBase, broadcast_module


class DDPStrategy(TorchOptimizerState, DistributedBase, Strategy):
    """Data-parallel G and D with plain torch Adam on every rank (`distributed.strategy: ddp`)."""

    def __init__(self, cfg) -> None:
        self._init_env(cfg)

    def setup(self, G: nn.Module, D: nn.Module, optim: dict[str, OptimSetup], accumulation: int,
              grad_clip: float, amp: str) -> None:
        """Broadcast rank 0's weights and buffers, build one Adam per net."""
        self.micro_batch(accumulation)  # fail early with a clear message when the batch does not divide
        self.accumulation, self.grad_clip, self.amp = accumulation, grad_clip, amp
        self._remember_trainable(G, D)
        for module in (G, D):
            broadcast_module(module, self.env, params=True)
        self.optimizers = {n: build_adam(self.trainable[n], optim[n]) for n in NETS}
        self.base_lr = {n: optim[n].lr for n in NETS}
        self.lr_scale = {n: 1.0 for n in NETS}
        use_scaler = amp == "fp16" and self.device.type == "cuda"
        self.scalers = {n: torch.amp.GradScaler("cuda") if use_scaler else None for n in NETS}

    def net(self, name: str) -> nn.Module:
        """The plain module: gradient sync happens in step(), not in forward hooks."""
        return self.modules[name]

    def module(self, name: str) -> nn.Module:
        """The plain module."""
        return self.modules[name]

    def backward(self, loss: torch.Tensor, name: str, last_micro: bool = True) -> None:
        """Local backward of loss / accumulation; nothing is communicated until step()."""
        loss = loss / self.accumulation
        scaler = self.scalers[name]
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def _average_gradients(self, name: str) -> None:
        params = [p for p in self.trainable[name] if p.grad is not None]
        if not params or self.world_size == 1:
            return
        grads = [p.grad for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=self.env.group)
        flat.div_(self.world_size)
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def step(self, name: str) -> StepStats:
        """All-reduce (mean) the phase's gradients, measure them, clip, Adam step, zero grads, sync buffers."""
        zero_fill_missing_grads(self.trainable[name])
        self._average_gradients(name)
        optimizer, scaler, module = self.optimizers[name], self.scalers[name], self.modules[name]
        if scaler is not None:
            scaler.unscale_(optimizer)
        total, norms, nonfinite = layer_grad_norms(module)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable[name], self.grad_clip, foreach=False)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        broadcast_module(module, self.env, params=False)
        return StepStats(grad_norm=total, layer_grad_norms=norms, nonfinite=nonfinite)

    def zero_grad(self, name: str) -> None:
        """Drop accumulated gradients of `name`."""
        self.optimizers[name].zero_grad(set_to_none=True)

    def _param_groups(self, name: str) -> list[dict]:
        return self.optimizers[name].param_groups

