"""What a step emits: telemetry sinks, the reporter, metrics.jsonl lines and sample grids.

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
