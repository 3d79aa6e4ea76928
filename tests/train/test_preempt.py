"""The SIGTERM flag's agreement without a piggybacked reduction: one all-reduce every PREEMPT_CHECK_EVERY steps on a
group, none on one process; a piggybacked answer (the watchdog's reduction) is used for its own step only."""
from __future__ import annotations

import os
import signal
import time

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


def test_a_loop_off_the_main_thread_catches_sigterm_through_the_launcher_s_installer():
    """As in a Ray Train worker: the loop's thread asks the main thread (here: this test's) to swap the handlers."""
    import queue
    import threading

    from gandist.train.preempt import launcher_hooks

    jobs: queue.Queue = queue.Queue()

    def on_main_thread(fn):  # what RayTrainWorker.execute does for the Ray installer
        done = threading.Event()
        jobs.put((fn, done))
        done.wait()

    def installer(handler):
        previous = []
        on_main_thread(lambda: previous.append(signal.signal(signal.SIGTERM, handler)))
        return lambda: on_main_thread(lambda: signal.signal(signal.SIGTERM, previous[0]))

    seen = {}

    def loop():
        stop = StopRequest()
        stop.install()  # not the main thread: signal.signal itself would raise ValueError here
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 2
        while not stop.requested and time.time() < deadline:
            time.sleep(0.01)
        seen["flag"], seen["agreed"] = stop.flag(), stop.agreed(FakeGroup(1), 1)
        stop.restore()
        jobs.put(None)

    launchers = []  # the launcher's own handler (Ray's exits the process): it must not see the signal

    def launcher_handler(signum, frame):
        launchers.append(signum)

    original = signal.signal(signal.SIGTERM, launcher_handler)
    try:
        with launcher_hooks(installer):
            worker = threading.Thread(target=loop)
            worker.start()
            while (job := jobs.get(timeout=10)) is not None:
                job[0]()
                job[1].set()
            worker.join()
        assert signal.getsignal(signal.SIGTERM) is launcher_handler  # the launcher's handler is back
    finally:
        signal.signal(signal.SIGTERM, original)
    assert seen == {"flag": 1, "agreed": True} and launchers == []


def test_a_launcher_s_preemption_notice_is_the_same_stop_request_and_names_its_reason():
    from gandist.train.preempt import launcher_hooks

    notice = {"text": None}
    with launcher_hooks(notice=lambda: notice["text"]):
        stop, group = StopRequest(), FakeGroup(2)
        answers = [stop.agreed(group, step) for step in range(1, PREEMPT_CHECK_EVERY + 1)]
        notice["text"] = "node draining"
        answers += [stop.agreed(group, step) for step in range(PREEMPT_CHECK_EVERY + 1, 2 * PREEMPT_CHECK_EVERY + 1)]
    assert answers.index(True) + 1 == 2 * PREEMPT_CHECK_EVERY and stop.reason == "node draining"
    assert StopRequest().flag() == 0  # the hooks are gone with the block
