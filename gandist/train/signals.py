"""The Signals record: what the loop publishes after each G step. Watchdog, metrics and logs consume the same one.

A signal sink is any object with `publish(signals: Signals)` and `event(record: dict)` (watchdog, metrics exporter,
TensorBoard writer, jsonl logger); the loop calls both on each sink it holds.

During a step the values stay on the device as 0-d tensors (each `float(t)` on a GPU drains the CUDA queue);
`resolve()` moves them all to the host in one transfer, before the watchdog and the sinks read them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

_SCALARS = ("d_real", "d_fake", "nonfinite", "ema_distance")
_DICTS = ("losses", "grad_norm", "layer_grad_norm", "sigma")


def nonfinite_count(values) -> torch.Tensor | int:
    """How many of `values` (0-d tensors or floats) are NaN or infinite, without leaving the device."""
    tensors = [v for v in values if torch.is_tensor(v)]
    floats = sum(1 for v in values if not torch.is_tensor(v) and (v != v or v in (float("inf"), float("-inf"))))
    if not tensors:
        return floats
    return torch.isfinite(torch.stack([t.detach().float() for t in tensors])).logical_not().sum() + floats


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
    ada_p: float | None = None  # ADA's augmentation probability after this step (None: ADA off)
    ada_rt: float | None = None  # ADA's r_t = E[sign D(real)] at its last adjustment
    verdict: str = "ok"  # watchdog verdict after this step: ok, warn, diverged
    resolution: int | None = None  # progressive growing: the level trained this step (None: not growing)
    fade_alpha: float | None = None  # progressive growing: the level's fade-in alpha in [0, 1]

    def resolve(self) -> None:
        """Replace every tensor value by its Python number: one stacked device-to-host copy per device."""
        slots: dict[torch.device, list[tuple[dict | None, str, torch.Tensor]]] = {}
        for name in _SCALARS:
            value = getattr(self, name)
            if torch.is_tensor(value):
                slots.setdefault(value.device, []).append((None, name, value))
        for name in _DICTS:
            table = getattr(self, name)
            for key, value in table.items():
                if torch.is_tensor(value):
                    slots.setdefault(value.device, []).append((table, key, value))
        for entries in slots.values():
            # stack promotes mixed dtypes (bf16 and float32 values stay exact); one .tolist() per device
            numbers = torch.stack([v.detach().reshape(()) for _, _, v in entries]).to(torch.float64).tolist()
            for (table, key, _), number in zip(entries, numbers):
                if table is None:
                    setattr(self, key, int(number) if key == "nonfinite" else number)
                else:
                    table[key] = number

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        out = asdict(self)
        for key in ("resolution", "fade_alpha"):  # only progressive runs carry them
            if out[key] is None:
                del out[key]
        return out

