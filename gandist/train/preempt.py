"""Preemption: SIGTERM (how cloud providers and Kubernetes announce it) makes the group save a checkpoint and stop.

A signal reaches one process, often only one rank of a group, at any moment; a checkpoint save is collective. So the
handler only sets a flag, and the ranks agree on it at a step boundary with a max-reduction: piggybacked on the
watchdog's per-step verdict reduction when the watchdog is on (no extra collective), otherwise its own one-element
all-reduce every PREEMPT_CHECK_EVERY steps (one process needs none). Every rank then saves the checkpoint of the
same step and stops with exit code 143 (128 + SIGTERM), which launchers (torchrun, Ray Train, Kubernetes) read as a
failure to restart from: the restart resumes at that step and loses none.

The handler is installed only in the main thread (Python delivers signals there; Ray Train runs the loop in another
thread of its worker, where Ray's own SIGTERM handling applies and a restart resumes from the last periodic
checkpoint).
"""
from __future__ import annotations

import logging
import signal
import threading

import torch

from gandist.errors import Preempted

log = logging.getLogger("gandist.train")

PREEMPT_CHECK_EVERY = 5  # steps between the stop-flag all-reduces when nothing else reduces every step


class StopRequest:
    """This process's SIGTERM flag and the group's agreement on it."""

    def __init__(self) -> None:
        self.requested = False
        self.agreed_this_step: bool | None = None  # set by a piggybacked reduction (the watchdog's), per step
        self._previous = None

    def install(self) -> None:
        """Catch SIGTERM in the main thread (elsewhere signal.signal cannot, and the launcher's handling stays)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_signal(self, signum, frame) -> None:
        if not self.requested:
            log.warning("SIGTERM: saving a checkpoint at the next step the group agrees on, then stopping")
        self.requested = True

    def flag(self) -> int:
        """1 if this process was asked to stop: the value a piggybacked max-reduction carries."""
        return int(self.requested)

    def note_agreed(self, value: int) -> None:
        """The group's max of flag() from a reduction that ran this step anyway."""
        self.agreed_this_step = bool(value)

    def agreed(self, strategy, step: int) -> bool:
        """Whether the group agrees to stop after this step (every rank gets the same answer at the same step)."""
        piggybacked, self.agreed_this_step = self.agreed_this_step, None
        if piggybacked is not None:
            return piggybacked
        if strategy.world_size == 1:
            return self.requested
        if step % PREEMPT_CHECK_EVERY:
            return False
        flag = torch.tensor([self.flag()], dtype=torch.int64, device=strategy.device)
        return bool(strategy.all_reduce(flag, "max").item())


def stop_preempted(tr) -> None:
    """Save this step's checkpoint (unless the periodic one just did), record the event, and stop (exit 143)."""
    if not tr.ckpt.due(tr.step):
        tr.save_checkpoint()
    tr.event({"event": "preempted", "step": tr.step, "signal": "SIGTERM"})
    raise Preempted(f"preempted (SIGTERM) at step {tr.step}: checkpoint step-{tr.step:08d} saved in {tr.run_url}; "
                    "run the same command again to resume from it")
