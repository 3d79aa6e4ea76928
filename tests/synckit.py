"""Count host-device syncs made from gandist's own code, on CPU, by patching torch.Tensor's conversion methods.

On a GPU each of these drains the CUDA queue: item, tolist, cpu, numpy and the Python conversions (float, int,
bool, index). A call counts when the frame that made it is in the gandist package (torch's internals, which sync
only where they must, are torch's business; CUDA's sync debug mode covers them in tools/gpu_check.sh).
"""
from __future__ import annotations

import contextlib
import sys
from collections import Counter
from pathlib import Path

import torch

import gandist

PACKAGE = str(Path(gandist.__file__).resolve().parent)
METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


class SyncCounter:
    """Calls per iteration: `iteration` is bumped by the caller at each step's start; `sites` names the lines."""

    def __init__(self) -> None:
        self.iteration = -1
        self.per_iteration: Counter = Counter()
        self.sites: dict[int, Counter] = {}

    def record(self, method: str) -> None:
        frame = sys._getframe(2)  # the caller of the patched method
        path = frame.f_code.co_filename
        if not path.startswith(PACKAGE):
            return
        self.per_iteration[self.iteration] += 1
        site = f"{Path(path).relative_to(Path(PACKAGE).parent)}:{frame.f_lineno} {method}"
        self.sites.setdefault(self.iteration, Counter())[site] += 1


@contextlib.contextmanager
def counting_syncs():
    """Patch the conversion methods for the duration; yields the SyncCounter."""
    counter = SyncCounter()
    originals = {name: getattr(torch.Tensor, name) for name in METHODS}

    def wrap(name, original):
        def patched(self, *args, **kwargs):
            counter.record(name)
            return original(self, *args, **kwargs)
        return patched

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def count_run_syncs(trainer) -> SyncCounter:
    """Run `trainer` to its train.steps counting syncs per loop iteration (startup not counted)."""
    with counting_syncs() as counter:
        train_step = trainer.train_step

        def counted_step():  # an iteration runs from one train_step to the next (health check and outputs too)
            counter.iteration += 1
            return train_step()

        trainer.train_step = counted_step
        try:
            trainer.run()
        finally:
            del trainer.train_step
    return counter
