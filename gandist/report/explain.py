"""Rollbacks in plain words: what tripped, how far past its bound, where the run went back to, what changed.

Used by the loop (one paragraph in the terminal when the watchdog acts), the run summary and the report page.
It reads only the rollback event (events.jsonl) and, when given, the run's watchdog config for the bounds that
the event's reason does not spell out (the spike detector's k, the sigma-growth factor). No heavy imports.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The detectors' reason strings (gandist/watchdog/detectors.py), parsed back into numbers.
_NUM = r"([-+0-9.eEinfa]+)"
_PATTERNS = {
    "bounds": re.compile(rf"^(\S+) = {_NUM} is past the bound {_NUM}$"),
    "spike": re.compile(rf"^(\S+) spiked to {_NUM} vs running median {_NUM} \({_NUM} robust std\) for (\d+) step"),
    "sigma_growth": re.compile(rf"^(\S+) top singular value grew {_NUM}x within (\d+) steps"),
    "d_overpower": re.compile(rf"^D overpowers G: D\(real\)-D\(fake\) gap {_NUM} > {_NUM} for (\d+) step"),
    "nonfinite": re.compile(r"^non-finite values in (.+)$"),
}


@dataclass
class Trip:
    """What tripped the detector: its name, the signal (flat name), the value, the bound and how far past it."""

    detector: str
    signal: str
    value: float = math.nan
    bound: float = math.nan
    words: str = ""  # "285x the bound 50", "12.3 robust std from the median (bound 6)"
    median: float | None = None  # spike detector: the running median the value was judged against


def _f(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _g(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def _watchdog(cfg: dict | None, section: str, key: str, default: float) -> float:
    try:
        return float(cfg["watchdog"][section][key])
    except (TypeError, KeyError, ValueError):
        return default


def parse_trip(event: dict, cfg: dict | None = None) -> Trip:
    """The detector, signal, value and bound behind a rollback or diverged event (from its reason and signals)."""
    reason = str(event.get("reason", ""))
    for detector, pattern in _PATTERNS.items():
        m = pattern.match(reason)
        if m is not None:
            return _TRIP_BUILDERS[detector](m, event, cfg)
    return Trip("unknown", "", words=reason or "no reason recorded")


def _bounds(m, event, cfg) -> Trip:
    value, bound = _f(m.group(2)), _f(m.group(3))
    ratio = abs(value) / bound if bound > 0 and math.isfinite(value) else math.nan
    words = f"{ratio:.3g} times its bound {_g(bound)}" if math.isfinite(ratio) else f"past its bound {_g(bound)}"
    return Trip("bounds", m.group(1), value, bound, words)


def _spike(m, event, cfg) -> Trip:
    signal, value, median, z = m.group(1), _f(m.group(2)), _f(m.group(3)), _f(m.group(4))
    k = _watchdog(cfg, "spike", "k", math.nan)
    bound = math.nan
    if math.isfinite(k) and math.isfinite(z) and z > 0:
        # the bound in the signal's own units: where a value k (not z) robust std from the median would sit
        log = signal.startswith("grad_norm/") and value > 0 and median > 0
        bound = median * (value / median) ** (k / z) if log else median + (value - median) * k / z
    words = f"{_g(z)} robust std from its running median {_g(median)}"
    words += f" (the bound is {_g(k)} robust std)" if math.isfinite(k) else ""
    return Trip("spike", signal, value, bound, words, median=median)


def _sigma(m, event, cfg) -> Trip:
    layer, ratio, window = m.group(1), _f(m.group(2)), m.group(3)
    factor = _watchdog(cfg, "sigma_growth", "factor", math.nan)
    signal = f"sigma/{layer}"
    value = (event.get("signals") or {}).get(signal, math.nan)
    words = f"grew {_g(ratio)}x within {window} steps"
    words += f" (the bound is {_g(factor)}x)" if math.isfinite(factor) else ""
    return Trip("sigma_growth", signal, _f(str(value)), math.nan, words)


def _overpower(m, event, cfg) -> Trip:
    gap, bound, steps = _f(m.group(1)), _f(m.group(2)), m.group(3)
    return Trip("d_overpower", "gap", gap, bound, f"above its bound {_g(bound)} for {steps} consecutive steps")


def _nonfinite(m, event, cfg) -> Trip:
    names = m.group(1)
    return Trip("nonfinite", names.split(", ")[0], math.nan, math.nan, f"non-finite (NaN/Inf) in {names}")


_TRIP_BUILDERS = {"bounds": _bounds, "spike": _spike, "sigma_growth": _sigma, "d_overpower": _overpower,
                  "nonfinite": _nonfinite}
DETECTOR_WORDS = {"bounds": "bounds detector", "spike": "spike detector", "sigma_growth": "sigma-growth detector",
                  "d_overpower": "D-overpowers-G detector", "nonfinite": "non-finite detector",
                  "unknown": "watchdog"}


def mitigation_words(mitigation: dict | None) -> str:
    """'halved both learning rates (x0.5, cumulative) and switched to a new latent-noise stream'."""
    m = mitigation or {}
    parts = []
    lr = float(m.get("lr_scale", 1.0))
    if lr != 1.0:
        parts.append("halved both learning rates (x0.5, cumulative)" if lr == 0.5
                     else f"scaled both learning rates x{_g(lr)} (cumulative)")
    if int(m.get("skip_batches", 0)):
        parts.append(f"skipped the next {int(m['skip_batches'])} data batch(es)")
    if m.get("reseed"):
        parts.append("switched to a new latent-noise stream")
    r1 = float(m.get("r1_scale", 1.0))
    if r1 != 1.0:
        parts.append(f"scaled the R1 penalty weight x{_g(r1)} (cumulative)")
    if not parts:
        return "changed nothing (watchdog.mitigation is neutral)"
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def explain_rollback(event: dict, cfg: dict | None = None) -> str:
    """One paragraph: what tripped at which step, how far past the bound, the checkpoint restored, the mitigation."""
    trip = parse_trip(event, cfg)
    signals = event.get("signals") or {}
    diverged = event.get("diverged_step", signals.get("step", event.get("step")))
    restored = event.get("checkpoint_step")
    if trip.detector == "nonfinite":
        what = f"found {trip.words}"
    elif trip.detector == "unknown":
        what = f"saw: {trip.words}"
    else:
        what = f"found {trip.signal} = {_g(trip.value)}, {trip.words}"
    text = f"At step {diverged} the {DETECTOR_WORDS[trip.detector]} {what}."
    if restored is not None:
        lost = f" ({int(diverged) - int(restored)} steps replayed)" if isinstance(diverged, int) else ""
        text += f" The watchdog rolled every rank back to the healthy checkpoint of step {restored}{lost}"
    else:
        text += " The watchdog rolled back"
    return text + f", then {mitigation_words(event.get('mitigation'))}."
