"""Optional TensorBoard writer: the same Signals as scalars under RUN_DIR/tensorboard (rank 0 only).

Needs the `tensorboard` package (not a gandist dependency): `tensorboard_available()` says whether it is importable,
and `make_tensorboard_sink` returns None (with one log line) when it is not, so a run never fails for lack of it.
"""
from __future__ import annotations

import importlib.util
import logging
import os

from gandist.telemetry.metrics import event_kind, split_loss_key
from gandist.train.signals import Signals

log = logging.getLogger(__name__)


def tensorboard_available() -> bool:
    """Whether the tensorboard package (needed by torch.utils.tensorboard) is importable."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardSink:
    """A signal sink (gandist.train.signals) writing scalars every `every` steps and events as text."""

    def __init__(self, log_dir: str, every: int = 10):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.every = every
        self.writer = SummaryWriter(log_dir=log_dir)

    def publish(self, signals: Signals) -> None:
        """Scalars of one G step (only every `every` steps: event files grow with every point)."""
        step = signals.step
        if step % self.every:
            return
        add = self.writer.add_scalar
        for key, value in signals.losses.items():
            net, term = split_loss_key(key)
            add(f"loss/{net}" if term is None else f"regularizer/{net}/{term}", value, step)
        add("d_output/real", signals.d_real, step)
        add("d_output/fake", signals.d_fake, step)
        for net, norm in signals.grad_norm.items():
            add(f"grad_norm/{net}", norm, step)
        sigma_max: dict[str, float] = {}
        for key, value in signals.sigma.items():
            net = key.partition("/")[0]
            sigma_max[net] = max(value, sigma_max.get(net, float("-inf")))
        for net, value in sigma_max.items():
            add(f"sigma_max/{net}", value, step)
        add("throughput/images_per_second", signals.img_per_sec, step)
        add("data/wait_seconds", signals.data_wait, step)
        add("data/skipped_samples", signals.skipped_samples, step)
        if signals.ema_distance is not None:
            add("ema/relative_distance", signals.ema_distance, step)

    def event(self, record: dict) -> None:
        """Watchdog and checkpoint events as text (one line of JSON-ish dict)."""
        kind = event_kind(record)
        if kind in ("diverged", "rollback", "gave_up"):
            self.writer.add_text(f"events/{kind}", str(record), int(record.get("step", 0)))

    def checkpoint_saved(self, step: int, seconds: float) -> None:
        """Checkpoint save time."""
        self.writer.add_scalar("checkpoint/seconds", seconds, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def make_tensorboard_sink(run_dir: str, every: int = 10) -> TensorBoardSink | None:
    """A TensorBoardSink in RUN_DIR/tensorboard, or None (logged) when tensorboard is not installed."""
    if not tensorboard_available():
        log.warning("telemetry.tensorboard is on but the tensorboard package is missing; pip install tensorboard")
        return None
    return TensorBoardSink(os.path.join(run_dir, "tensorboard"), every=every)
