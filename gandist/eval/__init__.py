"""Evaluation: feature networks (features.py), FID/KID/IS/PR (fid.py), mode coverage (modes.py), `gandist eval`."""
from __future__ import annotations

__all__ = ["frechet_distance"]


def __getattr__(name: str):
    # lazy: `gandist.eval.config` is imported by every config load, which must not pay for importing torch
    if name == "frechet_distance":
        from gandist.eval.fid import frechet_distance

        return frechet_distance
    raise AttributeError(f"module 'gandist.eval' has no attribute {name!r}")
