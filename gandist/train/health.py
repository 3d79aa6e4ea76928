"""The loop's side of the watchdog: agree on a verdict over ranks, roll back and apply the mitigation.

It exists so that the mitigation is applied in one place, as scales on the things it scales: the lr owner's
mitigation factor, the mitigated penalties' weight scale; plus a new noise epoch and skipped batches.
"""
from __future__ import annotations

import logging
import os

import torch

from gandist.errors import WatchdogGaveUp
from gandist.fileio import atomic_write_text
from gandist.report.explain import explain_rollback

log = logging.getLogger("gandist.train")


def check_health(tr, sig) -> None:
    """Observe, agree on the worst verdict over ranks, and roll back when it says diverged."""
    if tr.watchdog is None:
        return
    s = tr.strategy
    with s.gathered("G") as G_full:
        local = tr.watchdog.observe(sig, G_full, s.module("D"), tr.G_ema)
    # one reduction carries the verdict and the SIGTERM flag (gandist/train/preempt.py): no extra sync per step
    flags = torch.tensor([local, tr.stop.flag()], dtype=torch.int64, device=s.device)
    agreed, stop = s.all_reduce(flags, "max").tolist()
    tr.stop.note_agreed(stop)
    sig.verdict = ("ok", "warn", "diverged")[agreed]
    try:
        action = tr.watchdog.resolve(agreed, sig)
    except WatchdogGaveUp as err:  # after too many rollbacks: the last divergence is an event too
        tr.event({"event": "diverged", "reason": "gave up", "report": err.report})
        raise
    if action is not None:
        rollback(tr, action)


def rollback(tr, action) -> None:
    m = action.mitigation
    tr.event({"event": "diverged", "reason": action.reason, "signals": action.details})
    restored = tr.ckpt.restore_healthy(at_most=tr.step)
    if restored is None:
        raise WatchdogGaveUp(
            f"diverged at step {tr.step} ({action.reason}) but no checkpoint is marked healthy yet; the run "
            f"dir is intact. Lower the learning rates or save checkpoints earlier (checkpoint.every).")
    # the restored loop state set the factors back to the checkpoint's; the mitigation multiplies them
    tr.lr.mitigate(m.lr_scale)
    tr.set_penalty_scale(tr.penalty_scale * m.r1_scale)
    if m.reseed:
        tr.noise_epoch += 1
    for _ in range(m.skip_batches):
        next(tr.loader)
    tr.watchdog.after_rollback(restored)
    record = {"event": "rollback", "reason": action.reason, "signals": action.details,
              "diverged_step": action.details.get("step", None), "checkpoint_step": restored,
              "mitigation": {"lr_scale": m.lr_scale, "skip_batches": m.skip_batches, "reseed": m.reseed,
                             "r1_scale": m.r1_scale}}
    tr.rollbacks.append(record)
    tr.event(record)
    if tr.is_main:  # the same paragraph as the report's rollback panel (gandist/report/explain.py)
        log.warning("watchdog: %s", explain_rollback(record, tr.cfg.model_dump()))


def record_gave_up(tr, err: WatchdogGaveUp) -> None:
    """The gave_up event, and rank 0's watchdog_report.txt in the run dir."""
    tr.event({"event": "gave_up", "report": err.report})
    if tr.is_main:
        atomic_write_text(os.path.join(tr.run_dir, "watchdog_report.txt"), err.report + "\n")
