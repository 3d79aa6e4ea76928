"""What a run emits: telemetry sinks, the reporter, metrics.jsonl lines, sample grids, the progress bar, and the
start and end events.

It exists so that the loop's run reads as step, health, publish, evaluate, save; every output channel is here.
"""
from __future__ import annotations

import logging

from gandist.train import ema as ema_lib

log = logging.getLogger("gandist.train")


def publish(tr, sig, wall: float) -> None:
    """Throughput and EMA distance into the signals, then every sink, the reporter and metrics.jsonl."""
    cfg = tr.cfg
    sig.resolve()  # a no-op after the watchdog's observe, which resolves the step's signals with its sigmas
    sig.img_per_sec = cfg.train.batch_size * cfg.optim.d_steps / max(wall, 1e-9)
    if tr.G_ema is not None and tr.step % cfg.telemetry.log_every == 0 and sig.ema_distance is None:
        with tr.strategy.gathered("G") as G_full:  # every rank calls publish: a collective is safe here
            sig.ema_distance = ema_lib.relative_distance(tr.G_ema, G_full)
    for sink in tr.sinks:
        sink.publish(sig)
    if tr.reporter is not None and hasattr(tr.reporter, "on_step"):
        tr.reporter.on_step(tr.step, sig.losses)
    if tr.step % cfg.telemetry.log_every == 0 or tr.step == cfg.train.steps:
        record = sig.to_dict()
        record.pop("layer_grad_norm")
        tr.metrics_log.write(record)


def write_samples(tr) -> None:
    """Rank 0 writes the run's sample grid (gandist/train/sampling.py)."""
    if not tr.is_main:
        return
    if tr.G_ema is None and tr.strategy.partitions_params:
        log.warning("no samples: with train.ema.enabled=false, ZeRO-3's partitioned G cannot run on rank 0 alone")
        return
    from gandist.train.sampling import write_run_samples

    write_run_samples(tr)


def announce_start(tr, resumed: int | None) -> None:
    """The start event, and a resize event when a resumed run's world size changed (an elastic group, or a user)."""
    s = tr.strategy
    # (node, local rank) of every rank, in rank order: one gather at start, so the log shows how a group spans nodes
    placement = s.all_gather_object([s.node_rank, s.local_rank]) if s.world_size > 1 else [[s.node_rank, s.local_rank]]
    tr.event({"event": "start", "resumed_from": resumed, "world_size": s.world_size,
              "strategy": tr.cfg.distributed.strategy, "placement": placement})
    before = getattr(tr.ckpt, "resumed", {}) if resumed is not None else {}
    if before.get("world_size") not in (None, s.world_size):
        tr.event({"event": "resize", "from": before["world_size"], "to": s.world_size, "step": resumed,
                  "checkpoint": before["checkpoint"]})


class Progress:
    """Rank 0's tqdm bar under telemetry.progress (nothing otherwise): a step, or a rollback's jump back."""

    def __init__(self, tr):
        self.bar = None
        if tr.is_main and tr.cfg.telemetry.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=tr.cfg.train.steps, initial=tr.step, unit="step", dynamic_ncols=True,
                            desc=tr.cfg.name)

    def update(self, tr, sig) -> None:
        if self.bar is None:
            return
        if sig.verdict == "diverged":  # rolled back: the bar stands at the restored step
            self.bar.n = tr.step
            self.bar.refresh()
            return
        self.bar.update(1)
        if tr.step % tr.cfg.telemetry.log_every == 0:
            self.bar.set_postfix({"img/s": f"{sig.img_per_sec:.0f}", "D": f"{sig.losses.get('D', 0):.3f}",
                                  "G": f"{sig.losses.get('G', 0):.3f}"}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(tr, start_step: int, wall: float, sig) -> dict:
    """The run's summary (the end event, and what `gandist train` prints)."""
    cfg = tr.cfg
    done = tr.step - start_step
    return {"steps": tr.step, "wall_seconds": round(wall, 2),
            "img_per_sec": round(done * cfg.train.batch_size * cfg.optim.d_steps / max(wall, 1e-9), 1),
            "rollbacks": len(tr.rollbacks), "last_losses": dict(sig.losses) if sig else {}, "run_dir": tr.run_url}


def stopped_early(tr) -> bool:
    """eval.early_stop: True once the metric has not improved for `patience` evaluations. The first time, every
    rank saves this step's checkpoint (unless the periodic or best save just did) and the early_stop event is written."""
    stopper = getattr(tr.evaluator, "early_stop", None)
    if stopper is None or stopper.stopped_at is None:
        return False
    if not stopper.announced:
        if tr.ckpt.saved_step != tr.step:  # a collective: every rank's stopper saw the same evaluations
            tr.save_checkpoint()
        tr.event({"event": "early_stop", **stopper.record()})
        stopper.announced = True
        if tr.is_main:
            log.warning("early stop at step %d: %s has not improved on %s (step %s) for %d evaluations", tr.step,
                        stopper.metric, stopper.best, stopper.best_step, stopper.since)
    return True
