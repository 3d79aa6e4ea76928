"""The Strategy protocol: everything distributed lives behind it; the loop calls only these methods.

A strategy owns G and D (wrapped as it needs: plain, DDP, DeepSpeed engine) and their optimizers. The loop:

    with strategy.phase("D"):                      # only D's params require grad; only D's grads are synced
        for i, micro in enumerate(micro_batches):
            loss = ...strategy.D(x)...             # forward through the wrapped net
            strategy.backward(loss, "D", last_micro=(i == n - 1))   # strategy divides by the micro-batch count
        stats = strategy.step("D")                 # unscale, clip, optimizer step, zero grads -> StepStats
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from gandist.errors import UserError

NETS = ("G", "D")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class StepStats:
    """What one optimizer step saw, before clipping: the watchdog and telemetry read it."""

    grad_norm: float = 0.0
    layer_grad_norms: dict[str, float] = field(default_factory=dict)
    nonfinite: int = 0  # count of non-finite gradient elements


@dataclass
class OptimSetup:
    """Per-net optimizer settings after lazy-regularization rescaling (StyleGAN2: lr*r, beta**r, r=k/(k+1))."""

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float


class Strategy(ABC):
    """Base class; concrete strategies: single.py, ddp.py, zero.py."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    process_group: Any = None  # the group cross-replica BN reduces over (None: single process)

    @abstractmethod
    def setup(self, G: nn.Module, D: nn.Module, optim: dict[str, OptimSetup], accumulation: int,
              grad_clip: float, amp: str) -> None:
        """Wrap the nets, build their optimizers; called once, after the nets are built on `self.device`."""

    @abstractmethod
    def net(self, name: str) -> Any:
        """The callable to run forward passes through (DDP module, DeepSpeed engine or the module)."""

    @abstractmethod
    def module(self, name: str) -> nn.Module:
        """The plain nn.Module of G or D (for EMA, monitors, sampling)."""

    @abstractmethod
    def phase(self, name: str) -> contextlib.AbstractContextManager:
        """Context of a phase training `name`: only its params require grad; the other net's grads are not synced."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, name: str, last_micro: bool = True) -> None:
        """Backward of one micro-batch's mean loss (scaled by 1/accumulation here, not by the caller)."""

    @abstractmethod
    def step(self, name: str) -> StepStats:
        """Optimizer step of `name` after its micro-batches: unscale, measure, clip, step, zero grads."""

    @abstractmethod
    def zero_grad(self, name: str) -> None:
        """Drop accumulated gradients of `name`."""

    @abstractmethod
    def set_lr_scale(self, name: str, scale: float) -> None:
        """Multiply `name`'s base learning rate by `scale` (watchdog mitigation, fault injection)."""

    # Collectives: generic over torch.distributed (any backend); identity on one process.
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce over ranks in place and return it; op in sum, max, min, mean. Identity on one process."""
        if not _distributed():
            return tensor
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}
        dist.all_reduce(tensor, op=ops[op])
        if op == "mean":
            tensor /= dist.get_world_size()
        return tensor

    def barrier(self) -> None:
        """Wait for every rank."""
        if _distributed():
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank src's object on every rank."""
        if not _distributed():
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's object, in rank order."""
        if not _distributed():
            return [obj]
        import torch.distributed as dist

        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    @contextlib.contextmanager
    def gathered(self, name: str) -> Iterator[nn.Module]:
        """The full (unpartitioned) module, e.g. for EMA or orthogonal regularization under ZeRO-3."""
        yield self.module(name)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes."""
        return contextlib.nullcontext()

    @abstractmethod
    def state_dict(self) -> tuple[dict, dict]:
        """(shared, per_rank): shared holds full 'G'/'D' module weights and portable optimizer state (rank 0
        writes it); per_rank holds what only that rank has (ZeRO partitions), or {}. Every rank must call it."""

    @abstractmethod
    def load_state_dict(self, shared: dict, per_rank: dict | None) -> None:
        """Restore from state_dict()'s output, possibly written by another strategy or world size."""

    def close(self, clean: bool = True) -> None:
        """Release process groups and engines; `clean` is False when the run is failing (no waiting for peers)."""


# ---------------------------------------------------------------------------------------------------------------
# Portable optimizer state: Adam moments keyed by parameter name, so that any strategy can load any other's.


def adam_state_by_name(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict:
    """{'params': {name: {'exp_avg', 'exp_avg_sq', 'step'}}, 'lr_scale': ...} from a torch Adam over module."""
    names = {id(p): n for n, p in module.named_parameters()}
    out: dict[str, dict] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                out[names[id(p)]] = {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in st.items()}
    return {"params": out}


def load_adam_state_by_name(optimizer: torch.optim.Optimizer, module: nn.Module, state: dict) -> None:
    """Inverse of adam_state_by_name; raises KeyError naming a parameter the state lacks."""
    by_name = dict(module.named_parameters())
    saved = state["params"]
    for name, p in by_name.items():
        if name not in saved:
            if saved:  # a fresh optimizer (no steps yet) has no entries at all
                raise KeyError(f"optimizer state has no entry for parameter {name!r}: checkpoint of a different model?")
            continue
        optimizer.state[p] = {k: (v.to(p.device) if torch.is_tensor(v) else v) for k, v in saved[name].items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st and not torch.is_tensor(st["step"]):
                st["step"] = torch.tensor(float(st["step"]))


class TorchOptimizerState:
    """state_dict/load_state_dict of the strategies that keep whole modules and torch optimizers on every rank
    (single, ddp): full weights and by-name Adam state, all shared, nothing per rank. Needs `modules`,
    `optimizers` and `scalers` dicts keyed by net, `lr_scale` and `set_lr_scale`."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    scalers: dict[str, Any]
    lr_scale: dict[str, float]

    def state_dict(self) -> tuple[dict, dict]:
        shared: dict[str, Any] = {
            n: {k: v.detach().cpu().clone() for k, v in self.modules[n].state_dict().items()} for n in NETS
        }
        shared["optim"] = {n: adam_state_by_name(self.optimizers[n], self.modules[n]) for n in NETS}
        shared["lr_scale"] = dict(self.lr_scale)
        shared["scalers"] = {n: (s.state_dict() if s else None) for n, s in self.scalers.items()}
        return shared, {}

    def load_state_dict(self, shared: dict, per_rank: dict | None) -> None:
        """Load weights and by-name Adam state written by any strategy at any world size."""
        for n in NETS:
            try:
                self.modules[n].load_state_dict(shared[n])
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0]
                raise UserError(f"checkpoint holds a different {n} than this config builds ({first})") from None
            try:
                load_adam_state_by_name(self.optimizers[n], self.modules[n], shared["optim"][n])
            except KeyError as err:
                raise UserError(str(err.args[0])) from None
            self.set_lr_scale(n, shared.get("lr_scale", {}).get(n, 1.0))
            state = shared.get("scalers", {}).get(n)
            if state and self.scalers[n]:
                self.scalers[n].load_state_dict(state)


def build_adam(params, setup: OptimSetup) -> torch.optim.Optimizer:
    """Adam (AdamW when weight decay) with deterministic, non-fused kernels."""
    cls = torch.optim.AdamW if setup.weight_decay > 0 else torch.optim.Adam
    return cls(params, lr=setup.lr, betas=setup.betas, eps=setup.eps, weight_decay=setup.weight_decay, foreach=False)


def zero_fill_missing_grads(params) -> None:
    """Give each parameter without a gradient an exact zero one, so that an optimizer step steps every parameter.

    ZeRO's optimizers work on flat partitions and must step every element (Adam moves it by its momentum and counts
    the step); torch's Adam skips a parameter whose grad is None. A lazy penalty leaves some parameters without a
    gradient (R1: D's output bias; ortho: every bias), so without this single and ddp trained other weights than
    zero1/2/3 on the same batch. One semantics for every strategy: a step steps the whole net.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def layer_grad_norms(module: nn.Module) -> tuple[float, dict[str, float], int]:
    """(total norm, per-parameter norms, non-finite count) of a module's current gradients."""
    norms: dict[str, float] = {}
    total = 0.0
    nonfinite = 0
    for name, p in module.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach().float()
        bad = int((~torch.isfinite(g)).sum())
        nonfinite += bad
        n = float(g.norm()) if not bad else float("nan")
        norms[name] = n
        total += n * n
    return total ** 0.5, norms, nonfinite
