"""DeepSpeed ZeRO 1/2/3 with two engines, one per net (`distributed.strategy: zero1 | zero2 | zero3`).

Pitfalls handled here (each has a test in tests/strategies/ or tests/distributed/):
- DeepSpeed#399: G's backward runs through D; unless D's parameters are frozen during the G phase, D's engine
  collects stray gradients. `phase()` freezes the other net.
- #4923 / DeepSpeedExamples#193 (the GAN example failing at ZeRO-2/3): the engines' own micro-step counters assume
  one backward per micro-batch and one engine; here the loop owns the boundary: backward() marks it with
  `set_gradient_accumulation_boundary(last_micro)` and step() is the only call that steps the engine.
- Engines broadcast parameters but not buffers: spectral-norm u/v/sigma and BN running stats are broadcast from
  rank 0 at setup and after every step.
- engine.forward hooks its outputs for torch-style `loss.backward()`: any autograd pass over them, the inner
  `autograd.grad(create_graph=True)` of R1 / GP / DRAGAN included, ran the engine's backward epilogue (gradient
  reduction, IndexError in ZeRO-2's empty buckets) in the middle of the loss and divided the output gradient by the
  accumulation steps. ZeRO-1/2 forwards run the plain module (DeepSpeed's forward hooks on it still run) and every
  backward is engine.backward, which scales and reduces itself.
- ZeRO-3 gathers a module's own parameters around its forward; gandist's SN layers keep the weight as their own
  parameter (gandist/nn/spectral_norm.py), so W/sigma(W) sees the full weight. `gathered()` gives full weights for
  EMA and orthogonal regularization.
Checkpoints hold consolidated fp32 weights and Adam moments by parameter name (base.adam_state_by_name's format),
so a zero2 run resumes under ddp or single and `gandist generate` loads it on one process.
"""
from __future__ import annotations

import contextlib
import json
from typing import Iterator

import torch
import torch.utils.deterministic
from torch import nn

from gandist.data.base import micro_batch_size
from gandist.errors import UserError
from gandist.strategies.base import NETS, OptimSetup, StepStats, Strategy, build_adam
from gandist.strategies.dist_env import DistributedBase, broadcast_module


def deepspeed_config(cfg, stage: int, world_size: int, accumulation: int, grad_clip: float, amp: str,
                     numel: int = 5 * 10**8) -> dict:
    """The DeepSpeed config generated from gandist's: batch sizes, accumulation, clipping, precision, ZeRO stage.

    `numel` (the net's parameter count) caps the communication buckets: DeepSpeed's default 5e8-element buckets
    are allocated up front, 2 GB per engine per rank even for a tiny net.
    """
    zero = cfg.distributed.zero
    if zero.offload_params and stage != 3:
        raise UserError(f"distributed.zero.offload_params needs distributed.strategy=zero3 (got zero{stage}); "
                         "set distributed.zero.offload_params=false or use zero3")
    batch = cfg.train.batch_size
    micro = micro_batch_size(batch, world_size, accumulation)  # the one divisibility check
    bucket = int(min(max(numel, 10**6), 5 * 10**8))
    bucket = -(-bucket // 1024) * 1024  # DeepSpeed wants a multiple of its NCCL alignment factor (2 .. 512)
    zero_section: dict = {"stage": stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if stage == 3:
        # tensors under 1024 elements (biases, gains) stay whole on every rank; weight matrices are partitioned
        zero_section.update(stage3_param_persistence_threshold=1024, stage3_prefetch_bucket_size=bucket,
                            stage3_max_live_parameters=max(bucket, 10**7))
    if zero.offload_optimizer:
        zero_section["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if zero.offload_params:
        zero_section["offload_param"] = {"device": "cpu", "pin_memory": False}
    if amp == "fp16":
        raise UserError("train.amp=fp16 with distributed.strategy=zero*: not supported (DeepSpeed's fp16 mode casts "
                        "the nets to fp16, and fp16 autocast needs the loss scaling gandist does for single and ddp "
                        "only); use train.amp=bf16")
    return {
        "train_batch_size": batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": float(grad_clip),
        "zero_optimization": zero_section,
        # bf16 is gandist's torch.autocast around the forwards (fp32 weights, gradients and Adam, as under single
        # and ddp), not DeepSpeed's bf16 mode, which casts the nets to bf16 and then refuses fp32 inputs
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # torch Adam: same kernels as single/ddp, so results match them
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def partition_friendly_order(params: list[nn.Parameter], world_size: int) -> list[nn.Parameter]:
    """The parameters in an order whose flat concatenation ZeRO-1/2 can cut into equal partitions cheaply.

    ZeRO-1/2 flatten a param group in list order and cut it into world_size equal slices; every tensor that crosses
    a cut is held whole in the gradient buffers of the ranks on both sides (measured on BigGAN-128 at world 2:
    rank 0's gradient buffer was 1.38x its partition, because a 21M-element conv straddled the cut). So each
    slice is filled first-fit-decreasing with the tensors that fit before its cut, and the cut is crossed by the
    smallest tensor left. Deterministic (sorts are stable), so every rank computes the same order.
    """
    if world_size < 2:
        return list(params)
    remaining = sorted(params, key=lambda p: -p.numel())
    part = -(-sum(p.numel() for p in params) // world_size)
    ordered: list[nn.Parameter] = []
    offset = 0
    for k in range(1, world_size):
        room = k * part - offset
        kept = []
        for p in remaining:
            if p.numel() <= room:
                ordered.append(p)
                room -= p.numel()
                offset += p.numel()
            else:
                kept.append(p)
        remaining = kept
        if room > 0 and remaining:  # something must cross this cut: the smallest tensor left
            straddler = remaining.pop()
            ordered.append(straddler)
            offset += straddler.numel()
    return ordered + remaining


def _state_keys(module: nn.Module) -> list[tuple[str, str]]:
    """(key, 'param' | 'buffer') in state_dict order, without touching (possibly partitioned) tensors."""
    keys = []
    for prefix, m in module.named_modules():
        head = f"{prefix}." if prefix else ""
        keys += [(head + n, "param") for n, p in m._parameters.items() if p is not None]
        keys += [(head + n, "buffer") for n, b in m._buffers.items()
                 if b is not None and n not in m._non_persistent_buffers_set]
    return keys


class ZeroStrategy(DistributedBase, Strategy):
    """Two DeepSpeed engines (G, D) over torch Adam; the stage's subclass is picked by variant(name)."""

    stage: int = 0
    keeps_master_weights = True  # the engines step their own fp32 partitions and copy them into the module

    @classmethod
    def variant(cls, name: str) -> type["ZeroStrategy"]:
        """Zero1Strategy, Zero2Strategy or Zero3Strategy for distributed.strategy zero1, zero2, zero3."""
        return _STAGES[name]

    def __init__(self, cfg) -> None:
        if self.stage != int(cfg.distributed.strategy[-1]):
            raise ValueError(f"{type(self).__name__} built for distributed.strategy={cfg.distributed.strategy}; "
                             "build it with gandist.strategies.build_strategy")
        self._init_env(cfg)
        import deepspeed

        if self.device.type == "cpu":
            # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce (C++, minutes on a small machine,
            # and a killed build leaves a lock every later run waits on forever); gloo needs none of it.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=self.env.backend, auto_mpi_discovery=False)

    def setup(self, G: nn.Module, D: nn.Module, optim: dict[str, OptimSetup], accumulation: int,
              grad_clip: float, amp: str) -> None:
        """Broadcast rank 0's buffers (engines do the parameters), then build one engine per net."""
        import deepspeed

        self.accumulation, self.grad_clip, self.amp = accumulation, grad_clip, amp
        self._remember_trainable(G, D)
        # deterministic mode fills every torch.empty with NaN; DeepSpeed allocates its flat buffers that way each
        # step (measured: 78 s instead of 0.4 s for 5 toy steps). The fill is a debugging aid, not determinism.
        torch.utils.deterministic.fill_uninitialized_memory = False
        for module in (G, D):
            broadcast_module(module, self.env, params=True)
        for n, module in (("G", G), ("D", D)):
            scalars = [name for name, p in module.named_parameters() if p.dim() == 0]
            if scalars:  # DeepSpeed's engine broadcasts parameters as byte views, which 0-dim tensors refuse
                raise UserError(f"{n} has 0-dim parameters {scalars}, which DeepSpeed (distributed.strategy="
                                f"{self.cfg.distributed.strategy}) cannot hold: make them shape [1] in the model")
        self.engines, self.ds_configs, self._forwarded = {}, {}, set()
        for n in NETS:
            numel = sum(p.numel() for p in self.trainable[n])
            ds_config = deepspeed_config(self.cfg, self.stage, self.world_size, accumulation, grad_clip, amp, numel)
            self.ds_configs[n] = ds_config
            params = self.trainable[n] if self.stage == 3 else partition_friendly_order(self.trainable[n],
                                                                                       self.world_size)
            optimizer = build_adam(params, optim[n])
            try:
                engine, *_ = deepspeed.initialize(model=self.modules[n], optimizer=optimizer,
                                                  config=ds_config, dist_init_required=False)
            except Exception as err:  # DeepSpeed's own message, plus which gandist keys produced the config
                raise UserError(
                    f"DeepSpeed refused the config generated for {n} from distributed.strategy="
                    f"{self.cfg.distributed.strategy}, distributed.zero, train.amp={amp}: {err} "
                    f"(generated config: {json.dumps(ds_config)})") from err
            self.engines[n] = engine
            if self.stage == 3:
                engine.register_forward_pre_hook(lambda _module, _args, n=n: self._forwarded.add(n))
        self.base_lr = {n: optim[n].lr for n in NETS}
        self.lr_scale = {n: 1.0 for n in NETS}

    def net(self, name: str):
        """ZeRO-1/2: the plain module, without engine.forward's output hooks (see the module docstring); ZeRO-3: the
        engine, as its tests cover (no inner autograd.grad there: penalties that differentiate twice are refused)."""
        return self.engines[name] if self.stage == 3 else self.engines[name].module

    def module(self, name: str) -> nn.Module:
        """The plain module inside the engine (parameters partitioned under ZeRO-3: see gathered())."""
        return self.engines[name].module

    @contextlib.contextmanager
    def gathered(self, name: str) -> Iterator[nn.Module]:
        """The module with full parameters (read-only): ZeRO-3 all-gathers them for the duration."""
        module = self.module(name)
        if self.stage < 3:
            yield module
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield module

    def backward(self, loss: torch.Tensor, name: str, last_micro: bool = True) -> None:
        """engine.backward of loss / accumulation; the loop's last_micro marks the reduction boundary."""
        engine = self.engines[name]
        engine.set_gradient_accumulation_boundary(bool(last_micro))
        if name not in self._forwarded:
            # a loss computed through the plain module (every ZeRO-1/2 forward; ZeRO-3's regularizers) skipped the
            # engine's forward, which resets DeepSpeed's per-backward gradient-hook state
            if hasattr(engine.optimizer, "clear_backward_seen_flag"):
                engine.optimizer.clear_backward_seen_flag()
            # such a loss may reach a parameter's gradient node with no gradient (path length and StyleGAN2's
            # noise strengths): DeepSpeed's hook then finds grad None and fails. An exact zero for every
            # parameter is what ZeRO's flat buffers hold for them anyway
            if self.stage < 3:  # ZeRO-3 holds partitions outside its gathered forward; its hooks accept None
                loss = loss + sum(p.reshape(-1)[0] for p in self.trainable[name]) * 0.0
        self._forwarded.discard(name)
        engine.backward(loss)  # scale_wrt_gas: divides by gradient_accumulation_steps == optim.accumulation

    def _grad_stats(self, name: str) -> StepStats:
        """Per-parameter norms of the reduced gradient, from each rank's partition plus one all-reduce."""
        names = [n for n, p in self.module(name).named_parameters() if p.requires_grad]
        params = dict(self.module(name).named_parameters())
        sums = torch.zeros(2 * len(names), dtype=torch.float64)
        for i, n in enumerate(names):
            local = self._local_grad(params[n])
            if local is not None and local.numel():
                local = local.detach().float()
                finite = torch.isfinite(local)
                sums[2 * i] = float(torch.where(finite, local, 0).pow(2).sum())
                sums[2 * i + 1] = float((~finite).sum())
        sums = sums.to(self.device)
        self.all_reduce(sums)
        sums = sums.cpu()
        norms: dict[str, float] = {}
        nonfinite = 0
        for i, n in enumerate(names):
            bad = int(sums[2 * i + 1])
            nonfinite += bad
            norms[n] = float("nan") if bad else float(sums[2 * i]) ** 0.5  # no loss scaling: fp16 is refused
        total = sum(v * v for v in norms.values()) ** 0.5
        return StepStats(grad_norm=total, layer_grad_norms=norms, nonfinite=nonfinite)

    def _local_grad(self, p: nn.Parameter) -> torch.Tensor | None:
        """This rank's slice of p's reduced gradient (None when it owns none)."""
        if self.stage == 3:
            from deepspeed.utils import safe_get_local_grad

            return safe_get_local_grad(p)
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is None:
            return None
        # ZeRO-1/2 in fp32 (the only mode gandist enables) keep just this rank's fragment of each gradient
        frag = mapping.get_lp_grad_fragment(p._index_in_param_group).reshape(-1)
        if frag.numel() != mapping.lp_fragment_address.numel:
            raise RuntimeError(f"DeepSpeed returned a gradient fragment of {frag.numel()} values for a partition of "
                               f"{mapping.lp_fragment_address.numel}: unsupported DeepSpeed optimizer mode")
        return frag

    def step(self, name: str) -> StepStats:
        """Measure the reduced gradients, then engine.step(): unscale, clip, Adam on the partition, zero grads."""
        stats = self._grad_stats(name)
        engine = self.engines[name]
        engine.step()
        broadcast_module(self.module(name), self.env, params=False)
        return stats

    def _param_groups(self, name: str) -> list[dict]:
        return self.engines[name].optimizer.param_groups

    # -----------------------------------------------------------------------------------------------------------
    # Checkpoints: consolidated, portable

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
                if id(p) not in stepped:  # frozen (model.freeze_d): whole on every rank, no fp32 copy, no moments
                    weights[key] = p.detach().cpu().clone()
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
                if id(p) not in stepped:  # frozen: the optimizer holds no copy of it (ZeRO-3 is refused with it)
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


class Zero1Strategy(ZeroStrategy):
    """ZeRO-1: optimizer state partitioned."""

    stage = 1


class Zero2Strategy(ZeroStrategy):
    """ZeRO-2: optimizer state and gradients partitioned."""

    stage = 2


class Zero3Strategy(ZeroStrategy):
    """ZeRO-3: parameters partitioned too; the second backward of a gradient penalty finds them re-partitioned."""

    stage = 3
    partitions_params = True
    supports_double_backward = False
    steps_params_without_grad = False


_STAGES = {"zero1": Zero1Strategy, "zero2": Zero2Strategy, "zero3": Zero3Strategy}


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
