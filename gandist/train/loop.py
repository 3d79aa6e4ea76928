"""The GAN training loop: one run's parts, the step (the phase list of gandist/train/phases.py, then EMA), the run.

It does not know how many processes there are: everything distributed goes through the Strategy. The phases
(Dmain x optim.d_steps, Dreg, Gmain, Greg) are data built once; the learning rates have one owner (train/lr.py);
the watchdog's rollback and mitigation live in train/health.py, the builders of the nets and the optional
subsystems in train/parts.py, every output channel (sinks, logs, samples, progress bar, summary) in train/outputs.py.
"""
from __future__ import annotations

import logging
import os
import time

import torch

from gandist.data.base import micro_batch_size
from gandist.data.sources import build_source
from gandist.errors import WatchdogGaveUp
from gandist.objectives.penalties import build_penalties
from gandist.optim import lazy_optim
from gandist.randomness import seed_step_rng, stream_seed
from gandist.remote_run_dir import RemoteRunDir, is_remote
from gandist.strategies import build_strategy
from gandist.train import ema as ema_lib
from gandist.train import health, outputs, parts, preempt, unrolled
from gandist.train.device_setup import configure_device
from gandist.train.finetune import freeze_d, init_from
from gandist.train.lr import LearningRate
from gandist.train.phases import build_phases, run_phase
from gandist.train.rundir import JsonlWriter, claim_run_dir
from gandist.train.signals import Signals, nonfinite_count

log = logging.getLogger("gandist.train")


class Trainer:
    """Owns one run: nets, strategy, data, penalties, EMA, checkpoints, sinks."""

    def __init__(self, cfg, run_dir: str, *, force: bool = False, reporter=None, takeover: bool = False,
                 lease_owner: str | None = None):
        self.cfg, self.reporter = cfg, reporter
        # a URL run dir: checkpoints and lease on the URL, the other files staged locally and pushed (rank 0)
        self.run_url, self.remote = run_dir, RemoteRunDir(run_dir) if is_remote(run_dir) else None
        self.run_dir = self.remote.staging if self.remote else run_dir  # where this process writes its files
        self.strategy = build_strategy(cfg)
        self.is_main = self.strategy.rank == 0
        self.lease = None
        try:
            self._build(cfg, self.run_dir, force, takeover, lease_owner)
        except BaseException:
            if self.lease is not None:  # a failed start leaves the run dir free for the next attempt
                self.lease.release()
            raise

    def _build(self, cfg, run_dir: str, force: bool, takeover: bool, lease_owner: str | None) -> None:
        s = self.strategy
        configure_device(cfg.train.deterministic, s.device)
        self.micro = micro_batch_size(cfg.train.batch_size, s.world_size, cfg.optim.accumulation)
        # the data is opened before the run dir is written: a wrong data path leaves nothing behind
        self.source = build_source(cfg.data)
        self.info = self.source.info
        if self.is_main:  # one writer per run dir: its lease, taken before the first file is written
            self.lease = claim_run_dir(cfg, self.run_url, force=force, takeover=takeover, owner=lease_owner,
                                       remote=self.remote)
        s.barrier()

        G, D = parts.build_nets(cfg, self.info, s, self.is_main)
        self.penalties = build_penalties(cfg.penalties)  # their config_checks ran in config validation
        self.ada = parts.build_ada(cfg)
        optim = {n: lazy_optim(getattr(cfg.optim, n.lower()), cfg.optim.impl, self.penalties, n) for n in ("G", "D")}
        # ACGAN: D has a class head (config validation made sure there are labels)
        self.aux = getattr(cfg.model, "d_conditioning", "projection") == "auxiliary" and bool(G.num_classes)
        self.growth = parts.build_growth(cfg, self.info)
        # the EMA copy is made before setup: ZeRO-3 partitions G's parameters in setup
        self.G_ema = ema_lib.make_ema(G).to(s.device) if cfg.train.ema.enabled else None
        init_from(cfg, self.run_url, s, G, D, self.G_ema)  # fine-tuning: weights only, before any engine copies them
        freeze_d(D, cfg.model.freeze_d)  # frozen before setup: every strategy builds its optimizer without them
        s.setup(G, D, optim, cfg.optim.accumulation, cfg.optim.grad_clip, cfg.train.amp)
        self.loader = self.source.loader(s.rank, s.world_size, cfg.train.batch_size, cfg.seed, cfg.optim.accumulation)

        self.phases = build_phases(self.penalties, cfg.optim.d_steps)
        self.d_look_ahead = None  # the unrolled GAN's look-ahead D (a functional forward) during the G phase
        self.lr = LearningRate(s, steps=cfg.train.steps, decay_start=cfg.optim.lr_decay_start)

        self.step, self.images_seen, self.noise_epoch = 0, 0, 0
        self.penalty_scale = 1.0  # the mitigated penalties' weight scale (checkpointed as r1_factor)
        self.rollbacks: list[dict] = []
        self.best_pending = False
        self.watchdog = parts.build_watchdog(cfg, s)
        self.stop = preempt.StopRequest()  # SIGTERM: the group saves and stops at a step it agrees on
        self.metrics_log = JsonlWriter(os.path.join(run_dir, "metrics.jsonl") if self.is_main else None)
        self.events_log = JsonlWriter(os.path.join(run_dir, "events.jsonl") if self.is_main else None)
        self.sinks = parts.build_sinks(cfg, s, run_dir, self.is_main)
        self.evaluator = parts.build_evaluator(cfg, run_dir)
        self.ckpt = parts.build_checkpointer(self)
        outputs.announce_start(self, self.ckpt.resume())

    # -- the loop's own state (the checkpointer's "loop" part) --------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "images_seen": self.images_seen, "noise_epoch": self.noise_epoch,
                "lr_factor": self.lr.mitigation, "r1_factor": self.penalty_scale, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.images_seen, self.noise_epoch = state["step"], state["images_seen"], state["noise_epoch"]
        self.lr.mitigation = state["lr_factor"]
        self.set_penalty_scale(state["r1_factor"])
        if "rollbacks" in state:  # a watchdog rollback keeps the history it is adding to
            self.rollbacks = list(state["rollbacks"])

    def set_penalty_scale(self, scale: float) -> None:
        """The watchdog's penalty mitigation: the weight scale of every penalty that declares itself `mitigated`."""
        self.penalty_scale = scale
        for p in self.penalties:
            if p.mitigated:
                p.weight_scale = scale

    def save_checkpoint(self) -> None:
        try:
            saved = self.ckpt.save(self.step)
        except Exception:  # noqa: BLE001 - re-raised below unless the lease explains it
            if self.lease is not None:  # a takeover mid-save explains the failure: stop with its message (exit 2)
                self.lease.check()
            raise
        self.event({"event": "checkpoint", "healthy": saved.healthy, "url": saved.url,
                    "seconds": round(saved.seconds, 3)})
        for sink in self.sinks:
            sink.checkpoint_saved(self.step, saved.seconds)
        if self.reporter is not None:
            self.reporter.on_checkpoint(self.step, saved.url)

    def evaluate(self) -> None:
        """Periodic evaluation when due; a new best, or one of the checkpoint.keep_best best, is saved (if this step
        has no periodic save) and ranked."""
        G = self.G_ema if self.G_ema is not None else self.strategy.module("G")
        result = self.evaluator.maybe_evaluate(self.step, G, self.strategy)
        if result is None:
            return
        self.event({"event": "eval", "metrics": result})
        key = self.evaluator.rank_key(result) if self.is_main else None
        ranked = self.is_main and (self.evaluator.is_best(result) | self.ckpt.store.ranks_among_best(key))
        key = self.strategy.broadcast_object(key if ranked else None)
        if key is not None:
            if not self.ckpt.due(self.step):
                self.save_checkpoint()
            self.best_pending = key  # ranked once this step's checkpoint exists

    def event(self, record: dict) -> None:
        """An events.jsonl line (rank 0) and a telemetry event (every rank)."""
        record = {"step": self.step, **record}
        self.events_log.write(record)
        for sink in self.sinks:
            sink.event(record)
        if self.remote is not None and self.is_main:  # events are rare: each carries the logs to the URL
            self.remote.push_or_warn()

    # -- one G step ------------------------------------------------------------------------------------------
    def train_step(self) -> Signals:
        s, cfg = self.strategy, self.cfg
        seed_step_rng(stream_seed(cfg.seed, self.noise_epoch, self.step, s.rank), s.device)  # model-internal noise
        if self.watchdog:
            self.watchdog.before_step(self.step, s, self.lr)
        sig = Signals(step=self.step)
        if self.growth is not None:
            self.growth.begin_step(self.images_seen, cfg.train.batch_size * cfg.optim.d_steps,
                                   (s.module("G"), s.module("D"), self.G_ema), s)
            sig.resolution, sig.fade_alpha = self.growth.resolution, self.growth.alpha
        real = real_y = None
        for phase in self.phases:
            for k in range(phase.repeat):
                if phase.name == "D":  # each D step on a new batch; the other phases reuse the last one
                    t0 = time.perf_counter()
                    real, real_y = next(self.loader)
                    real = self.growth.fade_reals(real) if self.growth is not None else real
                    sig.data_wait += time.perf_counter() - t0
                t1 = time.perf_counter()
                with unrolled.look_ahead(self, phase, real, real_y):  # G against D after k updates (or nothing)
                    run_phase(self, phase, phase.tag(k), real, real_y, sig)
                sig.seconds[phase.name] = sig.seconds.get(phase.name, 0.0) + time.perf_counter() - t1
        if self.G_ema is not None:
            ema_lib.step_ema(self.G_ema, s, cfg.train.ema, cfg.train.batch_size, self.images_seen, self.step)
        if self.ada is not None:  # every rank adds the same global totals: p stays identical across ranks
            self.ada.end_step(lambda t: s.all_reduce(t.to(s.device), "sum").cpu())
            sig.ada_p, sig.ada_rt = self.ada.p, self.ada.rt
        self.images_seen += cfg.train.batch_size * cfg.optim.d_steps
        self.step += 1
        sig.step = self.step
        sig.images_seen = self.images_seen
        sig.skipped_samples = getattr(self.loader, "skipped_samples", 0)
        sig.lr = self.lr.current()
        sig.nonfinite = sig.nonfinite + nonfinite_count(list(sig.losses.values()))
        return sig

    def check_health(self, sig: Signals) -> None:
        """The watchdog's verdict over ranks, and a rollback with its mitigation when it says diverged."""
        health.check_health(self, sig)

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until train.steps; returns the summary (also printed by rank 0)."""
        cfg, s = self.cfg, self.strategy
        start_step, start_time = self.step, time.time()
        progress = outputs.Progress(self)
        sig = None
        self.stop.install()
        try:
            while self.step < cfg.train.steps and not outputs.stopped_early(self):
                t0 = time.perf_counter()
                self.lr.apply(self.step, self.growth.lr_scale_at(self.images_seen) if self.growth else None)
                sig = self.train_step()
                self.check_health(sig)
                outputs.publish(self, sig, time.perf_counter() - t0)
                progress.update(self, sig)
                if sig.verdict == "diverged":
                    continue
                if cfg.telemetry.sample_every and self.step % cfg.telemetry.sample_every == 0:
                    outputs.write_samples(self)
                if self.evaluator is not None:
                    self.evaluate()
                if self.ckpt.due(self.step):
                    self.save_checkpoint()
                if self.best_pending:
                    self.ckpt.mark_best(self.step, self.best_pending)
                    self.best_pending = False
                if self.stop.agreed(s, self.step):
                    preempt.stop_preempted(self)
        except KeyboardInterrupt:
            # one process: keep the work done since the last checkpoint (ranks of a group may not all be
            # interrupted, and a save is collective, so multi-rank runs resume from the last periodic checkpoint)
            if s.world_size == 1 and not self.ckpt.due(self.step) and sig is not None and sig.verdict != "diverged":
                self.save_checkpoint()
                log.warning("interrupted: saved a checkpoint at step %d", self.step)
            raise
        finally:
            self.stop.restore()
            progress.close()
        outputs.write_samples(self)
        summary = outputs.summary(self, start_step, time.time() - start_time, sig)
        self.event({"event": "end", **summary})
        return summary

    def close(self, clean: bool = True) -> None:
        for sink in self.sinks:
            sink.close()
        self.metrics_log.close()
        self.events_log.close()
        if self.remote is not None and self.is_main and self.lease is not None:
            self.remote.push_or_warn()  # the last lines and samples, under the lease still (no other writer yet)
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
        health.record_gave_up(trainer, err)
        raise
    finally:
        trainer.close(clean)
