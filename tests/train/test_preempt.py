"""The SIGTERM flag's agreement without a piggybacked reduction: one all-reduce every PREEMPT_CHECK_EVERY steps on a
group, none on one process; a piggybacked answer (the watchdog's reduction) is used for its own step only."""
from __future__ import annotations

import os
import signal

import torch

from gandist.train.preempt import PREEMPT_CHECK_EVERY, StopRequest


class FakeGroup:
    """A strategy of `world_size` ranks whose peers' flags are `others`; counts the all-reduces it runs."""

    def __init__(self, world_size: int, others: int = 0):
        self.world_size, self.others, self.device, self.reduces = world_size, others, torch.device("cpu"), 0

    def all_reduce(self, tensor, op):
        assert op == "max"
        self.reduces += 1
        return tensor.clamp_(min=self.others)


def test_a_peer_s_flag_stops_every_rank_at_the_next_check_step_with_one_reduce_per_interval():
    stop, group = StopRequest(), FakeGroup(2, others=1)  # the signal reached the other rank
    answers = [stop.agreed(group, step) for step in range(1, 2 * PREEMPT_CHECK_EVERY + 1)]
    assert answers.index(True) + 1 == PREEMPT_CHECK_EVERY  # the first check step
    assert group.reduces == 2  # steps k and 2k only


def test_one_process_stops_at_once_without_a_collective_and_a_piggybacked_answer_lasts_one_step():
    stop, single = StopRequest(), FakeGroup(1)
    assert not stop.agreed(single, 1)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets the flag
        assert stop.requested and stop.flag() == 1 and stop.agreed(single, 2) and single.reduces == 0
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    quiet, group = StopRequest(), FakeGroup(2)
    quiet.note_agreed(1)  # a peer's flag came with the watchdog's verdict this step
    assert quiet.agreed(group, 1) and not quiet.agreed(group, 2) and group.reduces == 0
