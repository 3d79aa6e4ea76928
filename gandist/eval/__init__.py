"""Evaluation: one file per metric family and `gandist eval`.

features.py (feature networks), fid.py, kid.py, inception_score.py, precision_recall.py, modes.py (mode coverage),
streaming.py (the cross-rank sum and feature buffer they share), periodic.py (the Evaluator), cli.py.
"""
from __future__ import annotations

__all__ = ["frechet_distance"]


def __getattr__(name: str):
    # lazy: `gandist.eval.config` is imported by every config load, which must not pay for importing torch
    if name == "frechet_distance":
        from gandist.eval.fid import frechet_distance

        return frechet_distance
    raise AttributeError(f"module 'gandist.eval' has no attribute {name!r}")
