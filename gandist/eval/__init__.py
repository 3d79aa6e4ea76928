"""Evaluation: feature networks (features.py), FID/KID/IS/PR (fid.py), mode coverage (modes.py), `gandist eval`."""
from gandist.eval.fid import frechet_distance

__all__ = ["frechet_distance"]
