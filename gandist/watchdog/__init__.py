"""Stability watchdog: monitors fill the Signals record, detectors judge it, the policy rolls back and mitigates.

Exports resolve lazily: gandist.config imports gandist.watchdog.config, which must not pull torch in with it.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "VERDICTS": "gandist.watchdog.detectors",
    "Action": "gandist.watchdog.policy",
    "Mitigation": "gandist.watchdog.policy",
    "Watchdog": "gandist.watchdog.policy",
    "WatchdogGaveUp": "gandist.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gandist.watchdog' has no attribute {name!r}")
