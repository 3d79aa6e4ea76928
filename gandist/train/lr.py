"""The one owner of the learning rates: lr decay, the watchdog's rollback mitigation and fault injection all go here.

It exists so that one object decides the scale the strategy multiplies each net's base lr by (before, lr decay, the
rollback and the watchdog policy each called `strategy.set_lr_scale`). The scale is stored by the strategy (and
checkpointed with its optimizers); the cumulative mitigation factor is the loop's checkpointed `lr_factor`.
"""
from __future__ import annotations

NETS = ("G", "D")


class LearningRate:
    """Sets both nets' lr scale: mitigation x decay while decaying, the mitigation after a rollback, a fault's
    override when the watchdog injects an lr spike (which lasts until the next write)."""

    def __init__(self, strategy, *, steps: int, decay_start: float):
        self.strategy = strategy
        self.steps, self.start = steps, decay_start * steps
        self.mitigation = 1.0  # product of the watchdog's lr_scale over the rollbacks so far

    def decay(self, step: int) -> float:
        """optim.lr_decay_start's multiplier: 1 until that fraction of train.steps, then linear to 0."""
        return 1.0 if step < self.start else (self.steps - step) / (self.steps - self.start)

    def apply(self, step: int, level_scale: float | None = None) -> None:
        """Before each step: once the decay has begun, mitigation x decay (until then the scale stays as it is);
        a progressive run's level_scale (model.progressive.levels' lr_scale) multiplies in at every step."""
        decay = self.decay(step)
        if decay < 1 or level_scale is not None:
            self._set(self.mitigation * decay * (1.0 if level_scale is None else level_scale))

    def mitigate(self, scale: float) -> None:
        """After a rollback: the mitigation factor is multiplied by `scale` and becomes the lr scale."""
        self.mitigation *= scale
        self._set(self.mitigation)

    def override(self, scale: float) -> None:
        """An injected fault (watchdog.inject.kind=lr_spike): both lrs at base x `scale`."""
        self._set(scale)

    def current(self) -> dict[str, float]:
        return {n: self.strategy.current_lr(n) for n in NETS}

    def _set(self, scale: float) -> None:
        for net in NETS:
            self.strategy.set_lr_scale(net, scale)
