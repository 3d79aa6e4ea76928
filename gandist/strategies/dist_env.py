"""Process-group set-up shared by the ddp and zero strategies, and the collectives they expose to the loop.

Who starts the processes does not matter here: torchrun and `gandist train --ray` (Ray Train) both set RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; Ray Train also initializes torch.distributed itself, in which
case the existing default group is reused (and not destroyed by us on close).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gandist.data.base import micro_batch_size
from gandist.errors import UserError
from gandist.strategies.base import check_precision, check_reduce_op, pick_device

_ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistEnv:
    """Where this process sits: its rank, the world size, its device and the group collectives run on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    group: Any
    owns_group: bool  # we initialized it, so we destroy it on close
    node_rank: int = 0  # which node (machine) this process runs on, 0..nodes-1
    local_world_size: int = 1  # processes on this node


def node_position(environ=os.environ) -> tuple[int, int, int]:
    """(local_rank, local_world_size, node_rank) from the launcher's environment, checked.

    torchrun sets LOCAL_RANK, LOCAL_WORLD_SIZE and GROUP_RANK; Ray Train sets LOCAL_RANK, LOCAL_WORLD_SIZE and
    NODE_RANK from its context (ray_train.rank_environment). The local rank picks the GPU (cuda:LOCAL_RANK) and the
    metrics port; cross-replica BN and gradient averaging use the global group, so they do not depend on it.
    """
    def read(*names: str, default: str) -> int:
        for name in names:
            if name in environ:
                text = environ[name]
                if not text.isdigit():
                    raise UserError(f"{name}={text!r} in the environment is not a rank; unset it or fix the launcher")
                return int(text)
        return int(default)

    local_rank = read("LOCAL_RANK", default="0")
    local_world = read("LOCAL_WORLD_SIZE", default=str(local_rank + 1))
    node_rank = read("NODE_RANK", "GROUP_RANK", default="0")
    if local_rank >= local_world:
        raise UserError(f"LOCAL_RANK={local_rank} but LOCAL_WORLD_SIZE={local_world} in the environment; the "
                        "launcher set inconsistent ranks (launch with torchrun or `gandist train --ray`)")
    return local_rank, local_world, node_rank


def pick_backend(backend: str, device: torch.device) -> str:
    """distributed.backend resolved: auto -> nccl on CUDA, gloo on CPU; nccl on a CPU device is an error."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UserError("distributed.backend is 'nccl' but the device is CPU; set distributed.backend=gloo or auto")
    return backend


def init_process_group(backend: str = "auto", device: str = "auto") -> DistEnv:
    """Reuse an initialized default group (Ray Train) or initialize one from the torchrun environment variables."""
    local_rank, local_world, node_rank = node_position()
    dev = pick_device(device, local_rank)
    where = {"node_rank": node_rank, "local_world_size": local_world}
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend(),
                       dist.group.WORLD, owns_group=False, **where)
    missing = [k for k in _ENV_KEYS if k not in os.environ]
    if missing:
        raise UserError(
            f"distributed strategies need {', '.join(missing)} in the environment; launch with "
            "`torchrun --nproc_per_node N -m gandist train ...` (or `gandist train --ray`), or use "
            "distributed.strategy=single on one process")
    chosen = pick_backend(backend, dev)
    kwargs = {"device_id": dev} if chosen == "nccl" else {}
    dist.init_process_group(backend=chosen, rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]), **kwargs)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, chosen, dist.group.WORLD, owns_group=True,
                   **where)


@torch.no_grad()
def broadcast_tensors(tensors: list[torch.Tensor], env: DistEnv, src: int = 0) -> None:
    """Copy rank src's values into `tensors` on every rank (one flat broadcast per dtype)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=src, group=env.group)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def broadcast_module(module: nn.Module, env: DistEnv, params: bool = True) -> None:
    """Make every rank hold rank 0's buffers (SN u/v/sigma, BN running stats) and, if `params`, its parameters."""
    tensors = [b for b in module.buffers()]
    if params:
        tensors += [p.data for p in module.parameters()]
    if tensors:
        broadcast_tensors(tensors, env)


def destroy(env: DistEnv, wait_for_peers: bool = True) -> None:
    """Destroy the default group if this module created it."""
    if env.owns_group and dist.is_initialized():
        if wait_for_peers:
            # every rank past its last collective before any tears down: a gloo peer that destroyed its group
            # while the other still had a pair open made that other rank abort at exit ("terminate called without
            # an active exception", 2 of ~20 runs). Not after a failure: a peer may wait in another collective.
            dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# What ddp and zero share: the group and its collectives.


class DistributedBase:
    """Mixin for multi-process strategies: owns `env`, implements the Strategy collectives over its group."""

    env: DistEnv

    def _init_env(self, cfg) -> None:
        self.cfg = cfg
        self.env = init_process_group(cfg.distributed.backend, cfg.train.device)
        self.rank, self.world_size = self.env.rank, self.env.world_size
        self.local_rank, self.device = self.env.local_rank, self.env.device
        self.node_rank = self.env.node_rank
        self.process_group = self.env.group
        check_precision(cfg.train.amp, self.device)

    def micro_batch(self, accumulation: int) -> int:
        """Per-rank micro-batch size; an error naming the keys when the global batch does not divide."""
        return micro_batch_size(self.cfg.train.batch_size, self.world_size, accumulation)

    _OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce over the group and return it; op in sum, max, min, mean."""
        check_reduce_op(op)
        dist.all_reduce(tensor, op=self._OPS[op], group=self.env.group)
        if op == "mean":
            tensor.div_(self.world_size)
        return tensor

    def batch_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over every rank's micro-batch (equal sizes); torch.distributed.nn's all_reduce is differentiable: its
        backward sums each rank's gradient of the mean into the rank whose samples it came from."""
        from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

        return differentiable_all_reduce(tensor.mean(), group=self.env.group) / self.world_size

    def grad_mean(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-rank gradients averaged over ranks in one flat all-reduce, as ddp's step averages real gradients, but
        differentiable (torch.distributed.nn): G's gradient reaches every rank's fakes through D's look-ahead."""
        if self.world_size == 1 or not grads:
            return grads
        from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

        flat = differentiable_all_reduce(torch.cat([g.reshape(-1) for g in grads]), group=self.env.group)
        flat = flat / self.world_size
        return [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier(group=self.env.group)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank src's picklable object on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.env.group)
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's object, in rank order."""
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.env.group)
        return out

    def autocast(self):
        """The same torch.autocast as SingleStrategy (ZeRO too: its engines keep fp32 weights)."""
        from gandist.strategies.single import autocast_context

        return autocast_context(self.device, self.cfg.train.amp)

    def close(self, clean: bool = True) -> None:
        """Destroy the process group if we created it (after a barrier when the run ended cleanly)."""
        destroy(self.env, wait_for_peers=clean)
