"""The GAN training loop: D phases, lazy D regularization, G phase, lazy G regularization, EMA, signals.

It does not know how many processes there are: everything distributed goes through the Strategy. Phases follow
stylegan2-ada-pytorch (Dmain, Dreg, Gmain, Greg): a penalty with `every: k` runs in its own phase every k steps
with its weight multiplied by k, and that net's Adam lr and betas are rescaled by r = k/(k+1).
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext

import torch

from gandist.checkpoint import CheckpointStore
from gandist.data.base import micro_batch_size, micro_batch_start
from gandist.data.sources import build_source
from gandist.errors import WatchdogGaveUp
from gandist.fileio import atomic_write_text
from gandist.models.base import BuildContext
from gandist.objectives import losses
from gandist.objectives.penalties import PenaltyContext, build_penalties
from gandist.randomness import GlobalRandom, stream_seed
from gandist.registry import ARCHS, resolve
from gandist.report.explain import explain_rollback
from gandist.strategies import build_strategy
from gandist.strategies.base import OptimSetup
from gandist.train import ema as ema_lib
from gandist.train.lease import acquire_run_lease
from gandist.train.rundir import JsonlWriter, check_run_dir, write_run_config
from gandist.train.signals import Signals
from gandist.train.state import Checkpointer, GlobalRng, Part, StatefulList

log = logging.getLogger("gandist.train")


def lazy_optim(adam, penalties, net: str) -> OptimSetup:
    """Adam settings of `net` after StyleGAN2's lazy-regularization rescaling (r = k/(k+1))."""
    ks = {p.every for p in penalties if p.net == net and p.every > 1}
    ratio = max(ks) / (max(ks) + 1) if ks else 1.0
    return OptimSetup(lr=adam.lr * ratio, betas=tuple(b ** ratio for b in adam.betas), eps=adam.eps,
                      weight_decay=adam.weight_decay)


class Trainer:
    """Owns one run: nets, strategy, data, penalties, EMA, checkpoints, sinks."""

    def __init__(self, cfg, run_dir: str, *, force: bool = False, reporter=None, takeover: bool = False,
                 lease_owner: str | None = None):
        self.cfg, self.run_dir, self.reporter = cfg, run_dir, reporter
        self.strategy = build_strategy(cfg)
        self.is_main = self.strategy.rank == 0
        self.lease = None
        try:
            self._build(cfg, run_dir, force, takeover, lease_owner)
        except BaseException:
            if self.lease is not None:  # a failed start leaves the run dir free for the next attempt
                self.lease.release()
            raise

    def _build(self, cfg, run_dir: str, force: bool, takeover: bool, lease_owner: str | None) -> None:
        s = self.strategy
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.micro = micro_batch_size(cfg.train.batch_size, s.world_size, cfg.optim.accumulation)
        # the data is opened before the run dir is written: a wrong data path leaves nothing behind
        self.source = build_source(cfg.data)
        self.info = self.source.info
        if self.is_main:
            check_run_dir(cfg, run_dir, force)
            # one writer per run dir: the lease is taken before the first file is written (a refusal changes nothing)
            self.lease = acquire_run_lease(cfg, run_dir, takeover=takeover, owner=lease_owner)
            write_run_config(cfg, run_dir)
        s.barrier()

        group = s.process_group if cfg.distributed.cross_replica_bn else None
        if cfg.distributed.cross_replica_bn and s.world_size == 1 and self.is_main:
            log.warning("distributed.cross_replica_bn with one process: plain batch norm statistics are used")
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        G, D = resolve(ARCHS, cfg.model.arch, "model.arch")(cfg.model, self.info,
                                                               BuildContext(group, cfg.augment.pack))
        if cfg.train.channels_last and self.info.is_image:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        self.penalties = build_penalties(cfg.penalties)
        self.growth = None  # progressive growing (ProGAN): the level and fade-in alpha follow images_seen
        if getattr(cfg.model, "progressive", None) is not None and cfg.model.progressive.enabled:
            from gandist.train.growth import Growth

            self.growth = Growth(cfg.model.progressive, self.info.shape[-1])
        # ACGAN: D has a class head (config validation made sure there are labels)
        self.aux = getattr(cfg.model, "d_conditioning", "projection") == "auxiliary" and bool(G.num_classes)
        optim = {"G": lazy_optim(cfg.optim.g, self.penalties, "G"), "D": lazy_optim(cfg.optim.d, self.penalties, "D")}
        # the EMA copy is made before setup: ZeRO-3 partitions G's parameters in setup
        self.G_ema = ema_lib.make_ema(G).to(s.device) if cfg.train.ema.enabled else None
        s.setup(G, D, optim, cfg.optim.accumulation, cfg.optim.grad_clip, cfg.train.amp)
        self.loader = self.source.loader(s.rank, s.world_size, cfg.train.batch_size, cfg.seed, cfg.optim.accumulation)

        self.step, self.images_seen = 0, 0
        self.noise_epoch, self.lr_factor, self.r1_factor = 0, 1.0, 1.0
        self.rollbacks: list[dict] = []
        self.best_pending = False
        self.watchdog = self._build_watchdog()
        self.metrics_log = JsonlWriter(os.path.join(run_dir, "metrics.jsonl") if self.is_main else None)
        self.events_log = JsonlWriter(os.path.join(run_dir, "events.jsonl") if self.is_main else None)
        self.sinks = self._build_sinks()
        self.evaluator = self._build_evaluator()
        self.ckpt = self._build_checkpointer()
        resumed = self.ckpt.resume()
        self.event({"event": "start", "resumed_from": resumed, "world_size": s.world_size,
                    "strategy": cfg.distributed.strategy})

    # -- optional subsystems ----------------------------------------------------------------------------------
    def _build_watchdog(self):
        if not self.cfg.watchdog.enabled:
            return None
        from gandist.watchdog import Watchdog

        return Watchdog(self.cfg.watchdog, rank=self.strategy.rank, world_size=self.strategy.world_size)

    def _build_sinks(self) -> list:
        sinks = []
        if self.cfg.telemetry.port:  # 0: no Prometheus endpoint
            from gandist.telemetry.metrics import MetricsExporter

            sinks.append(MetricsExporter(self.cfg.telemetry, run=self.cfg.name, rank=self.strategy.rank,
                                         local_rank=self.strategy.local_rank))
        if self.is_main and self.cfg.telemetry.tensorboard:
            from gandist.telemetry.tensorboard import make_tensorboard_sink

            sink = make_tensorboard_sink(self.run_dir, every=self.cfg.telemetry.log_every)
            if sink is not None:
                sinks.append(sink)
        return sinks

    def _build_checkpointer(self) -> Checkpointer:
        cfg = self.cfg
        store = CheckpointStore(cfg.checkpoint.url or os.path.join(self.run_dir, "checkpoints"), cfg.checkpoint.keep_last)
        info = self.info
        return Checkpointer(
            store, self.strategy, every=cfg.checkpoint.every, last_step=cfg.train.steps,
            shared={"G_ema": Part(self.G_ema), "loop": Part(self, kept_on_rollback=("rollbacks",)),
                    "penalties": Part(StatefulList(self.penalties)),
                    "watchdog": Part(self.watchdog, on_rollback=False),
                    # the best evaluation so far: a resumed run must not tag a worse checkpoint "best"
                    "eval_best": Part(self.evaluator, on_rollback=False)},
            per_rank={"data": self.loader, "rng": GlobalRng()}, fallback={"data": "data0"},
            constants={"config": cfg.model_dump(mode="json"),
                       "data_info": {"shape": list(info.shape), "num_classes": info.num_classes,
                                     "value_range": list(info.value_range)}},
            meta={"config_hash": cfg.hash(), "strategy": cfg.distributed.strategy, "arch": cfg.model.arch},
            healthy=self.watchdog.healthy if self.watchdog else (lambda step: True),
            before_save=self.lease.check if self.lease is not None else None)

    # -- the loop's own state (the checkpointer's "loop" part) --------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "images_seen": self.images_seen, "noise_epoch": self.noise_epoch,
                "lr_factor": self.lr_factor, "r1_factor": self.r1_factor, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.images_seen, self.noise_epoch = state["step"], state["images_seen"], state["noise_epoch"]
        self.lr_factor, self.r1_factor = state["lr_factor"], state["r1_factor"]
        if "rollbacks" in state:  # a watchdog rollback keeps the history it is adding to
            self.rollbacks = list(state["rollbacks"])

    def save_checkpoint(self) -> None:
        saved = self.ckpt.save(self.step)
        self.event({"event": "checkpoint", "healthy": saved.healthy, "url": saved.url,
                    "seconds": round(saved.seconds, 3)})
        for sink in self.sinks:
            sink.checkpoint_saved(self.step, saved.seconds)
        if self.reporter is not None:
            self.reporter.on_checkpoint(self.step, saved.url)

    def evaluate(self) -> None:
        """Periodic evaluation when due; a new best is saved (if this step has no periodic save) and tagged."""
        G = self.G_ema if self.G_ema is not None else self.strategy.module("G")
        result = self.evaluator.maybe_evaluate(self.step, G, self.strategy)
        if result is None:
            return
        self.event({"event": "eval", "metrics": result})
        if self.strategy.broadcast_object(self.evaluator.is_best(result) if self.is_main else None):
            if not self.ckpt.due(self.step):
                self.save_checkpoint()
            self.best_pending = True  # tagged once this step's checkpoint exists

    def _build_evaluator(self):
        if not self.cfg.eval.every:
            return None
        from gandist.eval.periodic import Evaluator

        return Evaluator(self.cfg, self.run_dir)

    def event(self, record: dict) -> None:
        """An events.jsonl line (rank 0) and a telemetry event (every rank)."""
        record = {"step": self.step, **record}
        self.events_log.write(record)
        for sink in self.sinks:
            sink.event(record)

    # -- randomness ------------------------------------------------------------------------------------------
    def rand(self, tag: str, micro: int) -> GlobalRandom:
        """World-size-invariant draws for micro-batch `micro` of this rank's part of the global batch."""
        # micro-batch-major, as the data sources lay it out: global micro-batch i is the same samples and noise
        # whatever the world size
        offset = micro_batch_start(self.cfg.train.batch_size, self.strategy.rank, self.strategy.world_size,
                                   self.cfg.optim.accumulation, micro)
        return GlobalRandom(stream_seed(self.cfg.seed, self.noise_epoch), self.step, tag, offset,
                            self.cfg.train.batch_size, self.strategy.device)

    def latents(self, rand: GlobalRandom, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        G = self.strategy.module("G")
        z = rand.randn(n, G.z_dim)
        y = None
        if G.num_classes:
            y = (rand.rand(n) * G.num_classes).long().clamp_max(G.num_classes - 1)
        return z, y

    # -- D input pipeline --------------------------------------------------------------------------------------
    def d_forward(self, x: torch.Tensor, y, rand: GlobalRandom, with_class: bool = False):
        """D's logits after augmentation, instance noise and packing (the same pipeline for real and fake);
        with_class (an ACGAN D): (logits, class logits)."""
        aug = self.cfg.augment
        if aug.diffaugment or aug.instance_noise.std > 0 or aug.pack > 1:
            from gandist.objectives.augment import prepare_d_input

            x, y = prepare_d_input(x, y, aug, self.step, rand)
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.strategy.net("D")(x, y, return_class=True) if with_class else self.strategy.net("D")(x, y)

    def penalty_context(self, rand: GlobalRandom, **fields) -> PenaltyContext:
        """What penalties see: D through the input pipeline, this step's randomness, a mean over ranks."""
        return PenaltyContext(self.step, d_forward=lambda a, b: self.d_forward(a, b, rand), rand=rand,
                              reduce_mean=lambda t: self.strategy.all_reduce(t.clone(), "mean"), **fields)

    def _micro(self, t: torch.Tensor | None, i: int):
        return None if t is None else t[i * self.micro:(i + 1) * self.micro].to(self.strategy.device)

    # -- phases ----------------------------------------------------------------------------------------------
    def d_phase(self, k: int, real, real_y, sig: Signals) -> None:
        s, n = self.strategy, self.cfg.optim.accumulation
        main = [p for p in self.penalties if p.net == "D" and p.every == 1]
        with s.phase("D"):
            for i in range(n):
                rand = self.rand(f"D{k}", i)
                x, y = self._micro(real, i), self._micro(real_y, i)
                z, y_fake = self.latents(rand, self.micro)
                with s.autocast():
                    with torch.no_grad():
                        fake = s.net("G")(z, y_fake)
                    real_logits, real_class = self.d_forward(x, y, rand, with_class=True) if self.aux else (
                        self.d_forward(x, y, rand), None)
                    fake_logits = self.d_forward(fake, y_fake, rand)
                    loss = losses.d_loss(self.cfg.loss, real_logits.float(), fake_logits.float())
                    if real_class is not None:  # ACGAN: D learns the real labels
                        loss = loss + self._aux_term(sig, "D", real_class, y)
                ctx = self.penalty_context(rand, D=s.module("D"), real=x, real_y=y, fake=fake.detach(), fake_y=y_fake)
                for p in main:
                    term = p.loss(ctx) * (self.r1_factor if p.name == "r1" else 1.0)
                    sig.losses[f"D/{p.name}"] = float(term.detach())
                    loss = loss + term
                s.backward(loss, "D", last_micro=i == n - 1)
                sig.losses["D"] = float(loss.detach())
                sig.d_real, sig.d_fake = float(real_logits.detach().mean()), float(fake_logits.detach().mean())
        self._record_step(sig, "D", s.step("D"))
        for p in self.penalties:
            if p.net == "D":
                p.after_step(s.module("D"))

    def reg_phase(self, net: str, real, real_y, sig: Signals) -> None:
        """Lazy regularization of `net`: penalties due this step, weight x every, one optimizer step."""
        due = [p for p in self.penalties if p.net == net and p.every > 1 and self.step % p.every == 0]
        if not due:
            return
        s, n = self.strategy, self.cfg.optim.accumulation
        with s.phase(net):
            for i in range(n):
                rand = self.rand(f"{net}reg", i)
                z, y = self.latents(rand, self.micro)
                with s.gathered("G") if net == "G" else nullcontext(s.module("D")):
                    ctx = self.penalty_context(rand, g_forward=s.net("G"), G=s.module("G"), D=s.module("D"),
                                               real=self._micro(real, i), real_y=self._micro(real_y, i), z=z, y=y)
                    loss = 0.0
                    with s.autocast():
                        for p in due:
                            term = p.loss(ctx) * p.every * (self.r1_factor if p.name == "r1" else 1.0)
                            sig.losses[f"{net}/{p.name}"] = float(term.detach()) / p.every
                            loss = loss + term
                    # inside the gathered context: under ZeRO-3 the graph holds the gathered weights, which the
                    # backward needs whole
                    s.backward(loss, net, last_micro=i == n - 1)
        self._record_step(sig, f"{net}reg", s.step(net))

    def g_phase(self, real, real_y, sig: Signals) -> None:
        s, n = self.strategy, self.cfg.optim.accumulation
        main = [p for p in self.penalties if p.net == "G" and p.every == 1]
        with s.phase("G"):
            for i in range(n):
                rand = self.rand("G", i)
                z, y = self.latents(rand, self.micro)
                with s.autocast():
                    fake = s.net("G")(z, y)
                    fake_logits, fake_class = self.d_forward(fake, y, rand, with_class=True) if self.aux else (
                        self.d_forward(fake, y, rand), None)
                    real_logits = None
                    if losses.needs_real_in_g_phase(self.cfg.loss):
                        real_logits = self.d_forward(self._micro(real, i), self._micro(real_y, i), rand).float()
                    loss = losses.g_loss(self.cfg.loss, fake_logits.float(), real_logits)
                    if fake_class is not None:  # ACGAN: G makes samples D classifies as the requested class
                        loss = loss + self._aux_term(sig, "G", fake_class, y)
                if main:
                    with s.gathered("G") as G_full:
                        ctx = self.penalty_context(rand, g_forward=s.net("G"), G=G_full, D=s.module("D"), z=z, y=y)
                        for p in main:
                            term = p.loss(ctx)
                            sig.losses[f"G/{p.name}"] = float(term.detach())
                            loss = loss + term
                s.backward(loss, "G", last_micro=i == n - 1)
                sig.losses["G"] = float(loss.detach())
        self._record_step(sig, "G", s.step("G"))

    def _aux_term(self, sig: Signals, net: str, class_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        term = losses.aux_class_loss(self.cfg.loss, class_logits, y)
        sig.losses[f"{net}/aux"] = float(term.detach())
        return term

    def _record_step(self, sig: Signals, phase: str, stats) -> None:
        net = phase[0]
        if phase in ("D", "G"):
            sig.grad_norm[net] = stats.grad_norm
            sig.layer_grad_norm.update({f"{net}/{k}": v for k, v in stats.layer_grad_norms.items()})
        sig.nonfinite += stats.nonfinite

    # -- one G step ------------------------------------------------------------------------------------------
    def lr_decay(self, step: int) -> float:
        """Learning-rate multiplier of optim.lr_decay_start: 1 until that fraction of train.steps, then linear to 0."""
        steps, start = self.cfg.train.steps, self.cfg.optim.lr_decay_start * self.cfg.train.steps
        return 1.0 if step < start else (steps - step) / (steps - start)

    def apply_lr_decay(self) -> None:
        """Set both learning rates for this step (on top of the watchdog's lr_factor), once the decay has begun."""
        decay = self.lr_decay(self.step) * (self.growth.lr_scale_at(self.images_seen) if self.growth else 1.0)
        if decay != 1 or self.growth is not None:
            for net in ("G", "D"):
                self.strategy.set_lr_scale(net, self.lr_factor * decay)

    def train_step(self) -> Signals:
        s, cfg = self.strategy, self.cfg
        torch.manual_seed(stream_seed(cfg.seed, self.noise_epoch, self.step, s.rank))  # model-internal noise
        if self.watchdog:
            self.watchdog.before_step(self.step, s)
        sig = Signals(step=self.step)
        if self.growth is not None:
            self.growth.begin_step(self.images_seen, cfg.train.batch_size * cfg.optim.d_steps,
                                   (s.module("G"), s.module("D"), self.G_ema), s)
            sig.resolution, sig.fade_alpha = self.growth.resolution, self.growth.alpha
        real = real_y = None
        for k in range(cfg.optim.d_steps):
            t0 = time.perf_counter()
            real, real_y = next(self.loader)
            real = self.growth.fade_reals(real) if self.growth is not None else real
            sig.data_wait += time.perf_counter() - t0
            t1 = time.perf_counter()
            self.d_phase(k, real, real_y, sig)
            sig.seconds["D"] = sig.seconds.get("D", 0.0) + time.perf_counter() - t1
        for phase, fn in (("Dreg", lambda: self.reg_phase("D", real, real_y, sig)),
                          ("G", lambda: self.g_phase(real, real_y, sig)),
                          ("Greg", lambda: self.reg_phase("G", real, real_y, sig))):
            t1 = time.perf_counter()
            fn()
            sig.seconds[phase] = time.perf_counter() - t1
        if self.G_ema is not None:
            with s.gathered("G") as G_full:
                ema_lib.update_ema(self.G_ema, G_full, cfg.train.ema.decay, self.step, cfg.train.ema.start_step)
        self.images_seen += cfg.train.batch_size * cfg.optim.d_steps
        self.step += 1
        sig.step = self.step
        sig.images_seen = self.images_seen
        sig.skipped_samples = getattr(self.loader, "skipped_samples", 0)
        sig.lr = {n: s.current_lr(n) for n in ("G", "D")}
        sig.nonfinite += sum(1 for v in sig.losses.values() if v != v or v in (float("inf"), float("-inf")))
        return sig

    # -- watchdog ----------------------------------------------------------------------------------------------
    def check_health(self, sig: Signals) -> None:
        """Observe, agree on the worst verdict over ranks, and roll back when it says diverged."""
        if self.watchdog is None:
            return
        s = self.strategy
        with s.gathered("G") as G_full:
            local = self.watchdog.observe(sig, G_full, s.module("D"), self.G_ema)
        agreed = int(s.all_reduce(torch.tensor([local], dtype=torch.int64), "max").item())
        sig.verdict = ("ok", "warn", "diverged")[agreed]
        try:
            action = self.watchdog.resolve(agreed, sig)
        except WatchdogGaveUp as err:  # after too many rollbacks: the last divergence is an event too
            self.event({"event": "diverged", "reason": "gave up", "report": err.report})
            raise
        if action is not None:
            self.rollback(action)

    def rollback(self, action) -> None:
        m = action.mitigation
        self.event({"event": "diverged", "reason": action.reason, "signals": action.details})
        restored = self.ckpt.restore_healthy(at_most=self.step)
        if restored is None:
            raise WatchdogGaveUp(
                f"diverged at step {self.step} ({action.reason}) but no checkpoint is marked healthy yet; the run "
                f"dir is intact. Lower the learning rates or save checkpoints earlier (checkpoint.every).")
        self.lr_factor *= m.lr_scale
        self.r1_factor *= m.r1_scale
        for net in ("G", "D"):
            self.strategy.set_lr_scale(net, self.lr_factor)
        if m.reseed:
            self.noise_epoch += 1
        for _ in range(m.skip_batches):
            next(self.loader)
        self.watchdog.after_rollback(restored)
        record = {"event": "rollback", "reason": action.reason, "signals": action.details,
                  "diverged_step": action.details.get("step", None), "checkpoint_step": restored,
                  "mitigation": {"lr_scale": m.lr_scale, "skip_batches": m.skip_batches, "reseed": m.reseed,
                                 "r1_scale": m.r1_scale}}
        self.rollbacks.append(record)
        self.event(record)
        if self.is_main:  # the same paragraph as the report's rollback panel (gandist/report/explain.py)
            log.warning("watchdog: %s", explain_rollback(record, self.cfg.model_dump()))

    # -- outputs -----------------------------------------------------------------------------------------------
    def publish(self, sig: Signals, wall: float) -> None:
        sig.img_per_sec = self.cfg.train.batch_size * self.cfg.optim.d_steps / max(wall, 1e-9)
        if self.G_ema is not None and self.step % self.cfg.telemetry.log_every == 0 and sig.ema_distance is None:
            with self.strategy.gathered("G") as G_full:  # every rank calls publish: a collective is safe here
                sig.ema_distance = ema_lib.relative_distance(self.G_ema, G_full)
        for sink in self.sinks:
            sink.publish(sig)
        if self.reporter is not None and hasattr(self.reporter, "on_step"):
            self.reporter.on_step(self.step, sig.losses)
        if self.step % self.cfg.telemetry.log_every == 0 or self.step == self.cfg.train.steps:
            record = sig.to_dict()
            record.pop("layer_grad_norm")
            self.metrics_log.write(record)

    def write_samples(self) -> None:
        if not self.is_main:
            return
        if self.G_ema is None and self.strategy.partitions_params:
            log.warning("no samples: with train.ema.enabled=false, ZeRO-3's partitioned G cannot run on rank 0 alone")
            return
        from gandist.train.sampling import write_run_samples

        write_run_samples(self)

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until train.steps; returns the summary (also printed by rank 0)."""
        cfg, s = self.cfg, self.strategy
        start_step, start_time = self.step, time.time()
        bar = None
        if self.is_main and cfg.telemetry.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.train.steps, initial=self.step, unit="step", dynamic_ncols=True, desc=cfg.name)
        sig = None
        try:
            while self.step < cfg.train.steps:
                t0 = time.perf_counter()
                self.apply_lr_decay()
                sig = self.train_step()
                self.check_health(sig)
                self.publish(sig, time.perf_counter() - t0)
                if sig.verdict == "diverged":
                    if bar is not None:
                        bar.n = self.step
                        bar.refresh()
                    continue
                if bar is not None:
                    bar.update(1)
                    if self.step % cfg.telemetry.log_every == 0:
                        bar.set_postfix({"img/s": f"{sig.img_per_sec:.0f}", "D": f"{sig.losses.get('D', 0):.3f}",
                                         "G": f"{sig.losses.get('G', 0):.3f}"}, refresh=False)
                if cfg.telemetry.sample_every and self.step % cfg.telemetry.sample_every == 0:
                    self.write_samples()
                if self.evaluator is not None:
                    self.evaluate()
                if self.ckpt.due(self.step):
                    self.save_checkpoint()
                if self.best_pending:
                    self.ckpt.mark_best(self.step)
                    self.best_pending = False
        except KeyboardInterrupt:
            # one process: keep the work done since the last checkpoint (ranks of a group may not all be
            # interrupted, and a save is collective, so multi-rank runs resume from the last periodic checkpoint)
            if s.world_size == 1 and not self.ckpt.due(self.step) and sig is not None and sig.verdict != "diverged":
                self.save_checkpoint()
                log.warning("interrupted: saved a checkpoint at step %d", self.step)
            raise
        finally:
            if bar is not None:
                bar.close()
        self.write_samples()
        wall = time.time() - start_time
        done = self.step - start_step
        summary = {"steps": self.step, "wall_seconds": round(wall, 2),
                   "img_per_sec": round(done * cfg.train.batch_size * cfg.optim.d_steps / max(wall, 1e-9), 1),
                   "rollbacks": len(self.rollbacks), "last_losses": dict(sig.losses) if sig else {},
                   "run_dir": self.run_dir}
        self.event({"event": "end", **summary})
        return summary

    def close(self, clean: bool = True) -> None:
        for sink in self.sinks:
            sink.close()
        self.metrics_log.close()
        self.events_log.close()
        self.loader.close()
        self.strategy.close(clean)
        if self.lease is not None:  # this process writes nothing more: the next run may start at once
            self.lease.release()


def run_training(cfg, run_dir: str, *, force: bool = False, reporter=None, takeover: bool = False,
                 lease_owner: str | None = None) -> dict:
    """Train `cfg` in `run_dir` (resuming when it holds a checkpoint); returns the run summary.

    takeover: take the run dir's lease from a live holder; lease_owner: the owner id of a restartable run (Ray).
    """
    trainer = Trainer(cfg, run_dir, force=force, reporter=reporter, takeover=takeover, lease_owner=lease_owner)
    clean = False
    try:
        summary = trainer.run()
        clean = True
        return summary
    except WatchdogGaveUp as err:
        trainer.event({"event": "gave_up", "report": err.report})
        if trainer.is_main:
            atomic_write_text(os.path.join(run_dir, "watchdog_report.txt"), err.report + "\n")
        raise
    finally:
        trainer.close(clean)
