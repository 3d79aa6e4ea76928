"""The Signals record: what the loop publishes after each G step. Watchdog, metrics and logs consume the same one.

A signal sink is any object with `publish(signals: Signals)` and `event(record: dict)` (watchdog, metrics exporter,
TensorBoard writer, jsonl logger); the loop calls both on each sink it holds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Signals:
    """Health and progress of one G step (all D steps before it included). Values are this rank's."""

    step: int
    images_seen: int = 0
    losses: dict[str, float] = field(default_factory=dict)  # "G", "D", "D/r1", "G/path_length", ...
    d_real: float = 0.0  # mean D(real) logit
    d_fake: float = 0.0  # mean D(fake) logit
    grad_norm: dict[str, float] = field(default_factory=dict)  # per net, before clipping
    layer_grad_norm: dict[str, float] = field(default_factory=dict)  # "D/blocks.0.conv.weight" -> norm
    sigma: dict[str, float] = field(default_factory=dict)  # "D/blocks.0.conv" -> top singular value
    nonfinite: int = 0  # non-finite values in losses, logits and gradients
    seconds: dict[str, float] = field(default_factory=dict)  # "D", "G", "Dreg", "Greg", "data" -> seconds
    data_wait: float = 0.0  # seconds waiting for the data loader
    img_per_sec: float = 0.0
    lr: dict[str, float] = field(default_factory=dict)
    ema_distance: float | None = None  # ||EMA - G|| / ||G||
    skipped_samples: int = 0  # cumulative, from the data source
    verdict: str = "ok"  # watchdog verdict after this step: ok, warn, diverged
    resolution: int | None = None  # progressive growing: the level trained this step (None: not growing)
    fade_alpha: float | None = None  # progressive growing: the level's fade-in alpha in [0, 1]

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        out = asdict(self)
        for key in ("resolution", "fade_alpha"):  # only progressive runs carry them
            if out[key] is None:
                del out[key]
        return out

