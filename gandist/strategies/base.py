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
from gandist.optim import OptimSetup, build_optimizer  # noqa: F401  (OptimSetup: strategies import it here)
from gandist.strategies.grad_stats import layer_grad_norms  # noqa: F401  (the ZeRO-free strategies' step; tests)

NETS = ("G", "D")
REDUCE_OPS = ("sum", "max", "min", "mean")


def check_reduce_op(op: str) -> None:
    """all_reduce's op, checked alike by every strategy (a typo fails on one process too, not only under ddp)."""
    if op not in REDUCE_OPS:
        raise ValueError(f"all_reduce op {op!r} is not one of {', '.join(REDUCE_OPS)}")


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is wanted and present, else cpu; `device` is train.device (auto, cpu, cuda)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is visible; set train.device=cpu or auto")
    if device in ("cuda", "auto") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def check_precision(amp: str, device: torch.device) -> None:
    """Refuse fp16 off CUDA: its loss scaling (GradScaler) needs a CUDA device."""
    if amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp: fp16 needs a CUDA device (loss scaling); on CPU use bf16 or off")


@dataclass
class StepStats:
    """What one optimizer step saw, before clipping: the watchdog and telemetry read it.

    Values may be 0-d device tensors: Signals.resolve() moves them to the host with the rest of the step's signals.
    """

    grad_norm: float | torch.Tensor = 0.0
    layer_grad_norms: dict[str, float | torch.Tensor] = field(default_factory=dict)
    nonfinite: int | torch.Tensor = 0  # count of non-finite gradient elements


class Strategy(ABC):
    """Base class; concrete strategies: single.py, ddp.py, zero.py.

    Capabilities are class attributes, so that the config can ask a strategy class before any process group exists
    (`gandist.strategies.strategy_class(name).supports_double_backward`); the loop asks them instead of names.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0  # the node this process runs on (workers of one group may span nodes)
    device: torch.device = torch.device("cpu")
    process_group: Any = None  # the group cross-replica BN reduces over (None: single process)

    partitions_params: bool = False  # module(name) holds only this rank's slice of the weights (ZeRO-3)
    supports_double_backward: bool = True  # autograd.grad(create_graph=True) through the nets works (not ZeRO-3)
    keeps_master_weights: bool = False  # the optimizer steps its own copy and overwrites module weights from it
    # a lazy phase whose loss leaves some parameters without a gradient still steps them (with a zero gradient),
    # as every other phase does; ZeRO-3's partitioned Adam skips a parameter whose gradient never arrived
    steps_params_without_grad: bool = True
    compiles_nets: bool = True  # train.compile can wrap the plain nets (not DeepSpeed's engines)
    optimizer_kinds: tuple[str, ...] | None = None  # optim kinds its checkpoints carry (None: any torch optimizer)
    clears_optimizer_state: bool = True  # clear_optimizer_state() works (not inside DeepSpeed's partitions)
    # snapshot(), restore() and torch_optimizer() of strategies/net_state.py (the unrolled GAN's look-ahead D
    # updates): not over DeepSpeed's partitioned master weights and moments
    restores_net_state: bool = True

    modules: dict[str, nn.Module]
    trainable: dict[str, list[nn.Parameter]]  # each net's parameters that required grad at setup
    base_lr: dict[str, float]
    lr_scale: dict[str, float]

    @classmethod
    def variant(cls, name: str) -> type["Strategy"]:
        """The class that serves `distributed.strategy: name` (one registered class may serve several names)."""
        return cls

    @abstractmethod
    def setup(self, G: nn.Module, D: nn.Module, optim: dict[str, OptimSetup], accumulation: int,
              grad_clip: float, amp: str) -> None:
        """Wrap the nets, build their optimizers; called once, after the nets are built on `self.device`."""

    @abstractmethod
    def net(self, name: str) -> Any:
        """The callable to run forward passes through (DeepSpeed engine under ZeRO-3, else the module)."""

    @abstractmethod
    def module(self, name: str) -> nn.Module:
        """The plain nn.Module of G or D (for EMA, monitors, sampling)."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, name: str, last_micro: bool = True) -> None:
        """Backward of one micro-batch's mean loss (scaled by 1/accumulation here, not by the caller)."""

    @abstractmethod
    def step(self, name: str) -> StepStats:
        """Optimizer step of `name` after its micro-batches: unscale, measure, clip, step, zero grads."""

    @abstractmethod
    def _param_groups(self, name: str) -> list[dict]:
        """The param groups of `name`'s optimizer, whose "lr" set_lr_scale writes."""

    # -- phases: the other net frozen --------------------------------------------------------------------------
    def _remember_trainable(self, G: nn.Module, D: nn.Module) -> None:
        """Move the nets to the device and remember which parameters train (frozen ones stay frozen)."""
        self.modules = {"G": G.to(self.device), "D": D.to(self.device)}
        self.trainable = {n: [p for p in m.parameters() if p.requires_grad] for n, m in self.modules.items()}

    def _set_trainable(self, name: str, flag: bool) -> None:
        for p in self.trainable[name]:
            p.requires_grad_(flag)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Only `name`'s trainable params require grad inside (DeepSpeed#399: the other net holds no stray grads)."""
        other = "D" if name == "G" else "G"
        self._set_trainable(name, True)
        self._set_trainable(other, False)
        try:
            yield
        finally:
            self._set_trainable(other, True)

    def clear_optimizer_state(self) -> None:
        """Forget both optimizers' moments (progressive growing's reset_optim); see clears_optimizer_state."""
        raise NotImplementedError(f"{type(self).__name__} cannot clear its optimizer state")

    # where restores_net_state: strategies/net_state.py (single, ddp), strategies/zero_state.py (zero1, zero2)
    def snapshot(self, name: str) -> dict:
        """`name`'s weights, buffers and optimizer state, for restore()."""
        raise NotImplementedError(f"{type(self).__name__} cannot snapshot {name} (restores_net_state)")

    def restore(self, name: str, snapshot: dict) -> None:
        """Put back what snapshot() took, bitwise."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore {name} (restores_net_state)")

    def torch_optimizer(self, name: str) -> torch.optim.Optimizer:
        """`name`'s torch optimizer, to read (hyper-parameters, moments)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no plain torch optimizer (restores_net_state)")

    def grad_mean(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """The mean over ranks of per-rank gradients, differentiably (what step() does to real gradients, for the
        exact unrolled look-ahead, whose G gradient flows through D's updates); the identity on one process."""
        return grads

    # -- learning rate -----------------------------------------------------------------------------------------
    def set_lr_scale(self, name: str, scale: float) -> None:
        """Multiply `name`'s base learning rate by `scale` (lr decay, watchdog mitigation, fault injection)."""
        self.lr_scale[name] = float(scale)
        for group in self._param_groups(name):
            group["lr"] = self.base_lr[name] * self.lr_scale[name]

    def current_lr(self, name: str) -> float:
        """`name`'s learning rate now (base x lr scale)."""
        return self._param_groups(name)[0]["lr"]

    # -- collectives over the strategy's ranks (identities on one process) -----------------------------------
    @abstractmethod
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce over ranks in place and return it; op in REDUCE_OPS (sum, max, min, mean)."""

    @abstractmethod
    def batch_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over this micro-batch on every rank, with gradients flowing to every rank's samples.

        A statistic of the batch inside a loss (the relativistic loss's mean logit) must not depend on how the
        batch is split across ranks, or training stops being world-size invariant."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait for every rank."""

    @abstractmethod
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank src's picklable object on every rank."""

    @abstractmethod
    def all_gather_object(self, obj: Any) -> list:
        """Every rank's object, in rank order."""

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
# Portable optimizer state: per-parameter state keyed by parameter name, so that any strategy can load any other's.


def adam_state_by_name(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict:
    """{'params': {name: state}, 'group': {'step': ...}} of any optimizer over module (Adam: exp_avg, exp_avg_sq,
    step; RMSprop: square_avg, ...; AdaBelief keeps its step count in the param group, hence 'group')."""
    names = {id(p): n for n, p in module.named_parameters()}
    out: dict[str, dict] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                out[names[id(p)]] = {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in st.items()}
    group = optimizer.param_groups[0]
    return {"params": out, "group": {"step": group["step"]} if "step" in group else {}}


def load_adam_state_by_name(optimizer: torch.optim.Optimizer, module: nn.Module, state: dict) -> None:
    """Inverse of adam_state_by_name; raises KeyError naming a parameter the state lacks."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    by_name = {n: p for n, p in module.named_parameters() if id(p) in stepped}  # frozen ones have no state
    saved = state["params"]
    for name, p in by_name.items():
        if name not in saved:
            if saved:  # a fresh optimizer (no steps yet) has no entries at all
                raise KeyError(f"optimizer state has no entry for parameter {name!r}: checkpoint of a different model?")
            continue
        optimizer.state[p] = {k: (v.to(p.device) if torch.is_tensor(v) else v) for k, v in saved[name].items()}
    for group in optimizer.param_groups:
        group.update(state.get("group", {}))
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st and not torch.is_tensor(st["step"]):
                st["step"] = torch.tensor(float(st["step"]))


class TorchOptimizerState:
    """What the strategies that keep whole modules and torch optimizers on every rank (single, ddp) share: the
    backward, the optimizer step (ddp adds its gradient and buffer syncs through the two hooks), and
    state_dict/load_state_dict (full weights and by-name Adam state, all shared, nothing per rank). Needs
    `modules`, `trainable`, `optimizers` and `scalers` dicts keyed by net, `accumulation`, `grad_clip`,
    `lr_scale` and `set_lr_scale`."""

    modules: dict[str, nn.Module]
    trainable: dict[str, list[nn.Parameter]]
    optimizers: dict[str, torch.optim.Optimizer]
    scalers: dict[str, Any]
    lr_scale: dict[str, float]
    accumulation: int
    grad_clip: float

    compiled: dict[str, Any] = {}

    def _compile_nets(self, train_cfg) -> None:
        """train.compile: forwards go through torch.compile wrappers; module()/state dicts stay the plain nets, so
        checkpoints keep the uncompiled parameter names (no `_orig_mod.` prefix)."""
        self.compiled = {}
        if train_cfg.compile:
            if train_cfg.compile_backend == "inductor" and self.device.type == "cpu":
                from gandist.train.device_setup import check_cpp_compiler

                check_cpp_compiler()  # inductor would fail at the first forward, after the run has started
            self.compiled = {n: torch.compile(self.modules[n], backend=train_cfg.compile_backend) for n in NETS}

    def net(self, name: str) -> nn.Module:
        """The module, or its torch.compile wrapper under train.compile (ddp syncs gradients in step(), not in
        forward hooks, so no DDP wrapper)."""
        compiled = self.compiled.get(name)  # not `or`: bool() of an nn.Module asks its len()
        return self.modules[name] if compiled is None else compiled

    def module(self, name: str) -> nn.Module:
        """The plain module."""
        return self.modules[name]

    def backward(self, loss: torch.Tensor, name: str, last_micro: bool = True) -> None:
        """Local backward of loss / accumulation (loss-scaled under fp16); nothing is communicated here."""
        loss = loss / self.accumulation
        scaler = self.scalers[name]
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def _sync_gradients(self, name: str) -> None:
        """Hook before the gradients are measured (ddp: average them over ranks)."""

    def _after_step(self, name: str) -> None:
        """Hook after the optimizer step (ddp: broadcast rank 0's buffers)."""

    def step(self, name: str) -> StepStats:
        """Sync, unscale, measure, clip, Adam step (skipped by the GradScaler on fp16 overflow), zero grads."""
        optimizer, scaler, module = self.optimizers[name], self.scalers[name], self.modules[name]
        zero_fill_missing_grads(self.trainable[name])
        self._sync_gradients(name)
        if scaler is not None:
            scaler.unscale_(optimizer)
        norm, layers, nonfinite = layer_grad_norms(module)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable[name], self.grad_clip, foreach=False)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self._after_step(name)
        return StepStats(grad_norm=norm, layer_grad_norms=layers, nonfinite=nonfinite)

    def _param_groups(self, name: str) -> list[dict]:
        return self.optimizers[name].param_groups

    def clear_optimizer_state(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.state.clear()

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


def build_adam(params, setup: OptimSetup, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer `setup` names (gandist.optim: kind and kernel implementation) for the strategy's device."""
    return build_optimizer(params, setup, (device or torch.device("cpu")).type)


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
