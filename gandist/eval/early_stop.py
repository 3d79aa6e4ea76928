"""Early stopping on an evaluation metric (eval.early_stop): patience counted in evaluations, min_delta margin.

Every rank sees the same evaluation results, so every rank's stopper agrees and the ranks stop together. Its state
(best value and step, evaluations since, the stop step) is checkpointed: a resumed run keeps counting, and a run that
has stopped stops again at once when started on its run dir.
"""
from __future__ import annotations

from gandist.eval.config import LOWER_IS_BETTER


class EarlyStopper:
    """Tracks eval.early_stop.metric over the periodic evaluations and says when to stop."""

    def __init__(self, cfg) -> None:
        self.metric, self.patience, self.min_delta = cfg.metric, int(cfg.patience), float(cfg.min_delta)
        self.lower = cfg.metric in LOWER_IS_BETTER
        self.best: float | None = None
        self.best_step: int | None = None
        self.since = 0  # evaluations since the last improvement
        self.stopped_at: int | None = None
        self.announced = False  # the early_stop event was written (not checkpointed: see load_state_dict)

    def improves(self, value: float) -> bool:
        """Better than the best so far by more than min_delta (the first value always is)."""
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.lower else value > self.best + self.min_delta

    def observe(self, metrics: dict, step: int) -> None:
        """One evaluation's results at `step`."""
        value = float(metrics[self.metric])
        if self.improves(value):
            self.best, self.best_step, self.since = value, step, 0
        else:
            self.since += 1
        if self.since >= self.patience and self.stopped_at is None:
            self.stopped_at = step

    def record(self) -> dict:
        """The early_stop event's fields."""
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step, "patience": self.patience,
                "min_delta": self.min_delta, "evaluations_without_improvement": self.since}

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "since": self.since, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.since, self.stopped_at = int(state["since"]), state["stopped_at"]
        # a checkpoint with a stop step is saved just before the event is written: that run announced it
        self.announced = self.stopped_at is not None
