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

from gandist.strategies.base import NETS, OptimSetup, Strategy, TorchOptimizerState, build_adam
from gandist.strategies.dist_env import DistributedBase, broadcast_module
from gandist.strategies.net_state import NetStateRestore


class DDPStrategy(NetStateRestore, TorchOptimizerState, DistributedBase, Strategy):
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
        self.optimizers = {n: build_adam(self.trainable[n], optim[n], self.device) for n in NETS}
        self.base_lr = {n: optim[n].lr for n in NETS}
        self.lr_scale = {n: 1.0 for n in NETS}
        use_scaler = amp == "fp16" and self.device.type == "cuda"
        self.scalers = {n: torch.amp.GradScaler("cuda") if use_scaler else None for n in NETS}
        self._compile_nets(self.cfg.train)

    def _sync_gradients(self, name: str) -> None:
        """Average the phase's gradients over ranks: one flat all-reduce per optimizer step."""
        params = [p for p in self.trainable[name] if p.grad is not None]
        if not params or self.world_size == 1:
            return
        grads = [p.grad for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=self.env.group)
        flat.div_(self.world_size)
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def _after_step(self, name: str) -> None:
        """Every rank takes rank 0's buffers (SN u/v/sigma, BN running stats), as DDP's broadcast_buffers would."""
        broadcast_module(self.modules[name], self.env, params=False)
