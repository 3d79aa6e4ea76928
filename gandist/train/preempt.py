"""Preemption: SIGTERM (how cloud providers and Kubernetes announce it) makes the group save a checkpoint and stop.

A signal reaches one process, often only one rank of a group, at any moment; a checkpoint save is collective. So the
handler only sets a flag, and the ranks agree on it at a step boundary with a max-reduction: piggybacked on the
watchdog's per-step verdict reduction when the watchdog is on (no extra collective), otherwise its own one-element
all-reduce every PREEMPT_CHECK_EVERY steps (one process needs none). Every rank then saves the checkpoint of the
same step and stops with exit code 143 (128 + SIGTERM), which launchers (torchrun, Ray Train, Kubernetes) read as a
failure to restart from: the restart resumes at that step and loses none.

Python runs signal handlers in the main thread only. Under torchrun the loop is there and installs its handler
itself; a launcher that runs the loop in another thread (Ray Train's worker thread) hands `launcher_hooks` an
installer that puts the handler on its main thread, and may add its own preemption notice (Ray's node drain), read
at each flag() and treated as the same stop request.
"""
from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Callable

import torch

from gandist.errors import Preempted

log = logging.getLogger("gandist.train")

PREEMPT_CHECK_EVERY = 5  # steps between the stop-flag all-reduces when nothing else reduces every step

Handler = Callable[[int, object], None]
# installs a SIGTERM handler where Python delivers signals (the main thread) and returns the call that undoes it
Installer = Callable[[Handler], Callable[[], None]]
# a launcher's own preemption notice: why it says this process will stop soon, or None; a cheap local read
Notice = Callable[[], "str | None"]

_launcher: dict = {"installer": None, "notice": None}  # process-wide, as signal handlers are


@contextmanager
def launcher_hooks(installer: Installer | None = None, notice: Notice | None = None):
    """While the loop runs in a launcher's thread: how to catch SIGTERM from there, and the launcher's notice."""
    previous = dict(_launcher)
    _launcher.update(installer=installer, notice=notice)
    try:
        yield
    finally:
        _launcher.update(previous)


class StopRequest:
    """This process's stop flag (SIGTERM or a launcher's preemption notice) and the group's agreement on it."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = "SIGTERM"
        self.agreed_this_step: bool | None = None  # set by a piggybacked reduction (the watchdog's), per step
        self._previous = None
        self._undo: Callable[[], None] | None = None

    def install(self) -> None:
        """Catch SIGTERM: in the main thread directly, from another thread through the launcher's installer."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        elif _launcher["installer"] is not None:
            self._undo = _launcher["installer"](self._on_signal)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def _on_signal(self, signum, frame) -> None:
        if not self.requested:
            log.warning("SIGTERM: saving a checkpoint at the next step the group agrees on, then stopping")
        self.requested = True

    def flag(self) -> int:
        """1 if this process was asked to stop: the value a piggybacked max-reduction carries."""
        if not self.requested and _launcher["notice"] is not None:
            why = _launcher["notice"]()
            if why:
                log.warning("%s: saving a checkpoint at the next step the group agrees on, then stopping", why)
                self.requested, self.reason = True, why
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
            return bool(self.flag())
        if step % PREEMPT_CHECK_EVERY:
            return False
        flag = torch.tensor([self.flag()], dtype=torch.int64, device=strategy.device)
        return bool(strategy.all_reduce(flag, "max").item())


def stop_preempted(tr) -> None:
    """Save this step's checkpoint (unless the periodic one just did), record the event, and stop (exit 143)."""
    if not tr.ckpt.due(tr.step):
        tr.save_checkpoint()
    # the reason this rank knows: its own SIGTERM or notice, or (the default) a SIGTERM that reached another rank
    tr.event({"event": "preempted", "step": tr.step, "signal": tr.stop.reason})
    raise Preempted(f"preempted ({tr.stop.reason}) at step {tr.step}: checkpoint step-{tr.step:08d} saved in "
                    f"{tr.run_url}; run the same command again to resume from it")
