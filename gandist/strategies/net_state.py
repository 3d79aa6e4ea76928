"""Snapshot and restore of a whole net (weights, buffers, optimizer and loss-scaler state) for the strategies that
hold plain modules and torch optimizers (single, ddp): what the unrolled GAN's look-ahead D (train/unrolled.py)
needs. A strategy offers it when its class says `restores_net_state` (ZeRO-1/2: zero_state.py; not ZeRO-3)."""
from __future__ import annotations

import copy

import torch


class NetStateRestore:
    """Mixin over TorchOptimizerState's `modules`, `optimizers` and `scalers` dicts keyed by net."""

    def snapshot(self, name: str) -> dict:
        """Copies of `name`'s state dict (weights and buffers), its optimizer's and its loss scaler's."""
        scaler = self.scalers[name]
        return {"module": {k: v.detach().clone() for k, v in self.modules[name].state_dict().items()},
                "optim": copy.deepcopy(self.optimizers[name].state_dict()),
                "scaler": scaler.state_dict() if scaler is not None else None}

    def restore(self, name: str, snapshot: dict) -> None:
        """Put back what snapshot() took, bitwise: into the same weight and buffer tensors, and the optimizer."""
        self.modules[name].load_state_dict(snapshot["module"])
        self.optimizers[name].load_state_dict(copy.deepcopy(snapshot["optim"]))
        if snapshot["scaler"] is not None:
            self.scalers[name].load_state_dict(snapshot["scaler"])

    def torch_optimizer(self, name: str) -> torch.optim.Optimizer:
        """`name`'s torch optimizer, to read (hyper-parameters and moments)."""
        return self.optimizers[name]
