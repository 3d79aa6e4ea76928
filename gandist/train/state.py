"""Saving and restoring the whole training state through the CheckpointStore (exact resume, rollback)."""
from __future__ import annotations

import logging
import os
import time


from gandist.checkpoint import CheckpointStore
from gandist.errors import CheckpointError
from gandist.randomness import rng_state, set_rng_state

log = logging.getLogger("gandist.train")


class CheckpointIO:
    """The trainer's side of checkpoints: what goes in, and how it comes back."""

    def __init__(self, trainer):
        self.t = trainer
        cfg = trainer.cfg
        url = cfg.checkpoint.url or os.path.join(trainer.run_dir, "checkpoints")
        self.store = CheckpointStore(url, cfg.checkpoint.keep_last)

    # -- save ------------------------------------------------------------------------------------------------
    def save(self) -> None:
        t, s = self.t, self.t.strategy
        if getattr(t, "lease", None) is not None:
            t.lease.check()  # taken over by another process: write nothing more
        t0 = time.perf_counter()
        shared, per_rank = s.state_dict()  # every rank takes part (ZeRO gathers)
        healthy = t.watchdog.healthy(t.step) if t.watchdog else True
        files = {}
        rank_state = {"strategy": per_rank, "rng": rng_state(), "data": t.loader.state_dict()}
        files[f"rank-{s.rank:05d}.pt"] = self.store.write_rank_file(t.step, f"rank-{s.rank:05d}.pt", rank_state)
        if t.is_main:
            shared.update({
                "G_ema": t.G_ema.state_dict() if t.G_ema is not None else None,
                "loop": {"step": t.step, "images_seen": t.images_seen, "noise_epoch": t.noise_epoch,
                         "lr_factor": t.lr_factor, "r1_factor": t.r1_factor, "rollbacks": t.rollbacks},
                "penalties": [p.state_dict() for p in t.penalties],
                "watchdog": t.watchdog.state_dict() if t.watchdog else None,
                # the best evaluation so far: a resumed run must not tag a worse checkpoint "best"
                "eval_best": list(t.evaluator.best) if t.evaluator is not None and t.evaluator.best else None,
                "data0": t.loader.state_dict(),
                "config": t.cfg.model_dump(mode="json"),
                "data_info": {"shape": list(t.info.shape), "num_classes": t.info.num_classes,
                              "value_range": list(t.info.value_range)},
            })
            files["shared.pt"] = self.store.write_rank_file(t.step, "shared.pt", shared)
        all_files = {}
        for part in s.all_gather_object(files):
            all_files.update(part)
        url = None
        if t.is_main:
            url = self.store.commit(t.step, all_files, {
                "healthy": bool(healthy), "config_hash": t.cfg.hash(), "strategy": t.cfg.distributed.strategy,
                "world_size": s.world_size, "arch": t.cfg.model.arch})
        url = s.broadcast_object(url)
        seconds = time.perf_counter() - t0
        t.event({"event": "checkpoint", "healthy": bool(healthy), "url": url, "seconds": round(seconds, 3)})
        for sink in t.sinks:
            sink.checkpoint_saved(t.step, seconds)
        if t.reporter is not None:
            t.reporter.on_checkpoint(t.step, url)

    # -- restore ---------------------------------------------------------------------------------------------
    def _load_agreed(self, **kwargs):
        """Rank 0 picks the checkpoint (newest that verifies); every rank loads that one."""
        s = self.t.strategy
        step = None
        if s.rank == 0:
            found = self.store.load_newest(rank=0, **kwargs)  # rank 0's own file is verified in the choice too
            step = found.step if found else None
        step = s.broadcast_object(step)
        return None if step is None else self.store.load(step, rank=s.rank)

    def apply(self, ckpt) -> None:
        t = self.t
        manifest = ckpt.manifest
        if manifest.get("arch") not in (None, t.cfg.model.arch):
            raise CheckpointError(f"{ckpt.path}: holds a {manifest['arch']} model, the config builds "
                                  f"{t.cfg.model.arch}")
        t.strategy.load_state_dict(ckpt.shared, (ckpt.per_rank or {}).get("strategy"))
        if t.G_ema is not None and ckpt.shared.get("G_ema") is not None:
            t.G_ema.load_state_dict(ckpt.shared["G_ema"])
        loop = ckpt.shared["loop"]
        t.step, t.images_seen = loop["step"], loop["images_seen"]
        t.noise_epoch, t.lr_factor, t.r1_factor = loop["noise_epoch"], loop["lr_factor"], loop["r1_factor"]
        for p, state in zip(t.penalties, ckpt.shared.get("penalties", [])):
            p.load_state_dict(state)
        same_world = manifest.get("world_size") == t.strategy.world_size
        if ckpt.per_rank is not None and same_world:
            t.loader.load_state_dict(ckpt.per_rank["data"])
            set_rng_state(ckpt.per_rank["rng"])
        else:  # another world size: synthetic sources share one position; streams restart their shards
            t.loader.load_state_dict(ckpt.shared["data0"])

    def resume(self) -> int | None:
        """Continue from the newest valid checkpoint, if any; returns its step."""
        ckpt = self._load_agreed()
        if ckpt is None:
            return None
        self.apply(ckpt)
        t = self.t
        t.rollbacks = list(ckpt.shared["loop"].get("rollbacks", []))
        if t.watchdog and ckpt.shared.get("watchdog") is not None:
            t.watchdog.load_state_dict(ckpt.shared["watchdog"])
        if t.evaluator is not None and ckpt.shared.get("eval_best") is not None:
            t.evaluator.best = tuple(ckpt.shared["eval_best"])
        if t.is_main:
            log.info("resumed from %s", ckpt.path)
        return ckpt.step

    def restore_healthy(self, at_most: int) -> int | None:
        """Roll back to the newest checkpoint marked healthy (watchdog state and mitigations stay as they are)."""
        ckpt = self._load_agreed(healthy_only=True, at_most=at_most)
        if ckpt is None:
            return None
        self.apply(ckpt)
        return ckpt.step

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self) -> None:
        t = self.t
        result = t.evaluator.maybe_evaluate(t.step, t.G_ema if t.G_ema is not None else t.strategy.module("G"),
                                            t.strategy)
        if result is None:
            return
        t.event({"event": "eval", "metrics": result})
        best = t.strategy.broadcast_object(t.evaluator.is_best(result) if t.is_main else None)
        if best:
            if t.step % t.cfg.checkpoint.every:
                self.save()
            if t.is_main:
                self.store.mark_best(t.step)
