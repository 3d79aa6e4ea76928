"""ZeRO checkpoints: consolidated fp32 weights and Adam moments by parameter name, resharded on load.

The format is base.adam_state_by_name's, so a zero2 run resumes under ddp or single (or zero3 at another world
size) and `gandist generate` loads it on one process. Every rank must call both methods: consolidation and the
ZeRO-3 weight write are collectives.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from gandist.errors import UserError
from gandist.strategies.base import NETS


def _state_keys(module: nn.Module) -> list[tuple[str, str]]:
    """(key, 'param' | 'buffer') in state_dict order, without touching (possibly partitioned) tensors."""
    keys = []
    for prefix, m in module.named_modules():
        head = f"{prefix}." if prefix else ""
        keys += [(head + n, "param") for n, p in m._parameters.items() if p is not None]
        keys += [(head + n, "buffer") for n, b in m._buffers.items()
                 if b is not None and n not in m._non_persistent_buffers_set]
    return keys


class ZeroCheckpointState:
    """state_dict / load_state_dict of ZeroStrategy (strategies/zero.py). Needs `engines`, `module()`,
    `trainable`, `_set_trainable`, `lr_scale`, `set_lr_scale`, `stage`, `device`, `rank` and `world_size`."""

    def _inner_optimizer(self, name: str) -> torch.optim.Optimizer:
        return self.engines[name].optimizer.optimizer

    def _adam_step(self, name: str) -> float | None:
        for st in self._inner_optimizer(name).state.values():
            if "step" in st:
                return float(st["step"])
        return None

    def state_dict(self) -> tuple[dict, dict]:
        """Consolidated fp32 weights and by-name Adam moments (collectives: every rank must call it)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        shared: dict = {"optim": {}, "lr_scale": dict(self.lr_scale), "scalers": {n: None for n in NETS}}
        for n in NETS:
            self._set_trainable(n, True)  # ZeRO-3 only consolidates parameters that require grad
            module = self.module(n)
            params, buffers = dict(module.named_parameters()), dict(module.named_buffers())
            step = self._adam_step(n)
            weights, moments = {}, {}
            stepped = {id(p) for p in self.trainable[n]}
            for key, kind in _state_keys(module):
                if kind == "buffer":
                    weights[key] = buffers[key].detach().cpu().clone()
                    continue
                p = params[key]
                if id(p) not in stepped:  # frozen (model.freeze_d): no fp32 copy and no moments, only the weight
                    weights[key] = self._frozen_weight(p)
                    continue
                shape = tuple(getattr(p, "ds_shape", p.shape))
                weights[key] = safe_get_full_fp32_param(p).reshape(shape).cpu().to(p.dtype).clone()
                if step is not None:
                    moments[key] = {"step": torch.tensor(step),
                                    **{k: safe_get_full_optimizer_state(p, k).reshape(shape).cpu().clone()
                                       for k in ("exp_avg", "exp_avg_sq")}}
            shared[n] = weights
            shared["optim"][n] = {"params": moments}
        return shared, {}

    def _frozen_weight(self, p: nn.Parameter) -> torch.Tensor:
        """A frozen parameter's full weight: whole on every rank under ZeRO-1/2; ZeRO-3 partitions it like the
        others but keeps no fp32 master copy to consolidate from, so it is all-gathered (a collective, in the same
        key order on every rank). Frozen weights are never stepped, so the module's copy is the exact value."""
        if self.stage < 3:
            return p.detach().cpu().clone()
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            return p.detach().cpu().clone()

    # -- the unrolled GAN's copy form (train/unrolled.py): ZeRO-1/2 only ------------------------------------------
    def snapshot(self, name: str) -> dict:
        """Copies of everything a D step changes: the module's weights and buffers (whole on every rank under
        ZeRO-1/2), this rank's fp32 master partitions, the inner optimizer's moments, the engine's step counters
        and the loss scaler's state. ZeRO-3 (partitioned weights) keeps restores_net_state False."""
        engine = self.engines[name]
        zero = engine.optimizer
        scaler = getattr(zero, "loss_scaler", None)
        return {"module": {k: v.detach().clone() for k, v in engine.module.state_dict().items()},
                "fp32": [t.detach().clone() for t in zero.single_partition_of_fp32_groups],
                "optim": copy.deepcopy(zero.optimizer.state_dict()),
                "counters": (engine.global_steps, engine.global_samples, engine.micro_steps),
                "scaler": copy.deepcopy(vars(scaler)) if scaler is not None else None}

    def restore(self, name: str, snapshot: dict) -> None:
        """Put back what snapshot() took, bitwise, into the same tensors (the module's weights are views of
        DeepSpeed's flat low-precision buffers, so an in-place copy updates those too)."""
        engine = self.engines[name]
        zero = engine.optimizer
        engine.module.load_state_dict(snapshot["module"])
        for flat, saved in zip(zero.single_partition_of_fp32_groups, snapshot["fp32"]):
            flat.data.copy_(saved)
        zero.optimizer.load_state_dict(copy.deepcopy(snapshot["optim"]))
        engine.global_steps, engine.global_samples, engine.micro_steps = snapshot["counters"]
        if snapshot["scaler"] is not None:
            vars(zero.loss_scaler).update(copy.deepcopy(snapshot["scaler"]))

    def torch_optimizer(self, name: str) -> torch.optim.Optimizer:
        """A read-only torch optimizer over `name`'s trainable module parameters with the inner Adam's
        hyper-parameters and its moments gathered whole by parameter (the unrolled GAN's exact form under ZeRO-1/2;
        a collective: every rank calls it, in the same order). Costs one all-reduce of D's moments per call."""
        from deepspeed.utils import safe_get_full_optimizer_state

        inner, params = self._inner_optimizer(name), list(self.trainable[name])
        view = type(inner)(params, lr=inner.param_groups[0]["lr"])
        view.param_groups[0].update({k: v for k, v in inner.param_groups[0].items() if k != "params"})
        step = self._adam_step(name)
        if step is not None:
            for p in params:
                view.state[p] = {"step": torch.tensor(step),
                                 **{k: safe_get_full_optimizer_state(p, k).reshape(p.shape).clone()
                                    for k in ("exp_avg", "exp_avg_sq")}}
        return view

    def _ensure_adam_state(self, name: str, step: float) -> None:
        """Create (zero) Adam state on the flat partitions so that by-name moments can be written into it."""
        zero_optimizer, inner = self.engines[name].optimizer, self._inner_optimizer(name)
        flats = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
        if flats is None:  # ZeRO-1/2
            flats = zero_optimizer.single_partition_of_fp32_groups
        for flat in flats:
            st = inner.state[flat]
            if "exp_avg" not in st:
                st.update(exp_avg=torch.zeros_like(flat), exp_avg_sq=torch.zeros_like(flat))
            st["step"] = torch.tensor(float(step))
        link = getattr(self.engines[name].optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:
            link()

    def load_state_dict(self, shared: dict, per_rank: dict | None) -> None:
        """Load weights and by-name Adam state written by any strategy (single, ddp, zero*) at any world size."""
        for n in NETS:
            self._set_trainable(n, True)
            module, weights = self.module(n), shared[n]
            moments = shared["optim"][n]["params"]
            params, buffers = dict(module.named_parameters()), dict(module.named_buffers())
            _check_keys(n, module, weights)
            if moments:
                self._ensure_adam_state(n, float(next(iter(moments.values()))["step"]))
            stepped = {id(p) for p in self.trainable[n]}
            for key, kind in _state_keys(module):
                if kind == "buffer":
                    buffers[key].data.copy_(weights[key])
                    continue
                p, value = params[key], weights[key].to(self.device).float()
                if id(p) not in stepped:  # frozen: the optimizer holds no copy of it
                    if self.stage < 3:  # ZeRO-3's partitions are written below, with every other weight
                        p.data.copy_(value.to(p.dtype))
                    continue
                self._set_full(p, value)
                if self.stage < 3:
                    p.data.copy_(value.to(p.dtype))  # ZeRO-1/2 keep a full low-precision copy on every rank
                if moments:
                    if key not in moments:
                        raise UserError(f"optimizer state of {n} has no entry for parameter {key!r}: "
                                       "checkpoint of a different model?")
                    for k in ("exp_avg", "exp_avg_sq"):
                        self._set_full(p, moments[key][k].to(self.device).float(), k)
            if self.stage == 3:
                self._load_partitioned_weights(module, weights)
            self.set_lr_scale(n, shared.get("lr_scale", {}).get(n, 1.0))

    def _set_full(self, p: nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
        """Write a full fp32 tensor (weight, or Adam state `key`) into this rank's partition of p."""
        from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state,
                                     safe_set_local_fp32_param, safe_set_local_optimizer_state)

        if self.stage < 3:
            safe_set_full_fp32_param(p, value) if key is None else safe_set_full_optimizer_state(p, value, key)
            return
        # ZeRO-3 pads each parameter to world x partition size; DeepSpeed's full setter forgets the padding
        # (a 1-element bias fails on rank 1), so slice this rank's partition out of the padded tensor here.
        size = p.ds_tensor.numel()
        padded = torch.zeros(size * self.world_size, dtype=torch.float32, device=value.device)
        padded[:value.numel()] = value.reshape(-1)
        local = padded[self.rank * size:(self.rank + 1) * size]
        safe_set_local_fp32_param(p, local) if key is None else safe_set_local_optimizer_state(p, local, key)

    def _load_partitioned_weights(self, module: nn.Module, weights: dict) -> None:
        """ZeRO-3: write the full weights into the gathered params; leaving the context re-partitions them."""
        import deepspeed

        named = dict(module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(named.values()), modifier_rank=0):
            if self.rank == 0:
                for key, p in named.items():
                    p.data.copy_(weights[key].to(p.device, p.dtype))


def _check_keys(name: str, module: nn.Module, weights: dict) -> None:
    """A clear error when a checkpoint's weights belong to a different model."""
    expected = {k for k, _ in _state_keys(module)}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise UserError(f"checkpoint weights of {name} do not fit this model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}): checkpoint of a different model.arch or size?")
    params = dict(module.named_parameters())
    for key, p in params.items():
        shape = tuple(getattr(p, "ds_shape", p.shape))
        if tuple(weights[key].shape) != shape:
            raise UserError(f"checkpoint weight {name}.{key} has shape {tuple(weights[key].shape)}, the model "
                             f"{shape}: checkpoint of a different model size?")
