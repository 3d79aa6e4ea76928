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
so a zero2 run resumes under ddp or single and `gandist generate` loads it on one process: zero_state.py.
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
from gandist.optim import ADAM_MOMENTS
from gandist.strategies.base import NETS, OptimSetup, StepStats, Strategy, build_adam
from gandist.strategies.dist_env import DistributedBase, broadcast_module
from gandist.strategies.zero_state import ZeroCheckpointState


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


class ZeroStrategy(ZeroCheckpointState, DistributedBase, Strategy):
    """Two DeepSpeed engines (G, D) over torch Adam; the stage's subclass is picked by variant(name)."""

    stage: int = 0
    keeps_master_weights = True  # the engines step their own fp32 partitions and copy them into the module
    compiles_nets = False  # ZeRO-3 gathers weights in forward hooks that graph capture does not see; 1/2 untested
    optimizer_kinds = ADAM_MOMENTS  # zero_state.py carries exactly {step, exp_avg, exp_avg_sq} by name
    clears_optimizer_state = False  # the moments live in DeepSpeed's flat partitions
    restores_net_state = True  # ZeRO-1/2: zero_state.snapshot/restore (the unrolled GAN's copy form)

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
            optimizer = build_adam(params, optim[n], self.device)
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
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        squares, bad = [], []
        for n in names:  # on the device: no host sync per parameter, one all-reduce for the net
            local = self._local_grad(params[n])
            if local is not None and local.numel():
                local = local.detach().float()
                finite = torch.isfinite(local)
                squares.append(torch.where(finite, local, 0).pow(2).sum().double().to(self.device))
                bad.append((~finite).sum().double().to(self.device))
            else:
                squares.append(zero)
                bad.append(zero)
        if not names:
            return StepStats()
        sums = torch.stack([torch.stack(squares), torch.stack(bad)])
        self.all_reduce(sums)
        # no loss scaling: fp16 is refused
        layer = torch.where(sums[1] > 0, torch.full_like(sums[0], float("nan")), sums[0].sqrt())
        norms = dict(zip(names, layer.unbind()))
        nonfinite = sums[1].sum().long()
        total = layer.square().sum().sqrt()
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
    restores_net_state = False  # weights partitioned too: no whole D to snapshot and put back
    supports_double_backward = False
    steps_params_without_grad = False


_STAGES = {"zero1": Zero1Strategy, "zero2": Zero2Strategy, "zero3": Zero3Strategy}
