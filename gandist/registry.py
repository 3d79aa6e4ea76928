"""Name -> builder for every name a config picks: archs, sources, strategies, losses, penalties, detectors,
metrics.

Entries are "module:attribute" strings resolved on first use, so that `import gandist` never imports DeepSpeed or
Ray, and a newcomer finds where each name lives by reading this file.
"""
from __future__ import annotations

import importlib
from typing import Any

ARCHS = {
    "mlp": "gandist.models.mlp:build",
    "dcgan": "gandist.models.dcgan:build",
    "resnet": "gandist.models.resnet:build",
    "unet": "gandist.models.unet:build",
    "msggan": "gandist.models.msggan:build",
    "biggan": "gandist.models.biggan:build",
    "biggan_deep": "gandist.models.biggan:build",
    "stylegan2": "gandist.models.stylegan2:build",
}

SOURCES = {
    "toy2d": "gandist.data.sources:Toy2DSource",
    "digits": "gandist.data.sources:DigitsSource",
    "stacked_digits": "gandist.data.stacked:StackedDigitsSource",
    "folder": "gandist.data.sources:FolderSource",
    "webdataset": "gandist.data.stream:WebDatasetSource",
}

STRATEGIES = {
    "single": "gandist.strategies.single:SingleStrategy",
    "ddp": "gandist.strategies.ddp:DDPStrategy",
    "zero1": "gandist.strategies.zero:ZeroStrategy",
    "zero2": "gandist.strategies.zero:ZeroStrategy",
    "zero3": "gandist.strategies.zero:ZeroStrategy",
}

# loss.kind (and loss.relativistic_base) -> loss class with d(), g(), needs_real_in_g
LOSSES = {
    "ns": "gandist.objectives.losses:NonSaturating",
    "hinge": "gandist.objectives.losses:Hinge",
    "wasserstein": "gandist.objectives.losses:Wasserstein",
    "ls": "gandist.objectives.losses:LeastSquares",
    "relativistic": "gandist.objectives.losses:RelativisticAverage",
}

# penalties[i].kind -> Penalty class (config: gandist/objectives/config.py)
PENALTIES = {
    "gp": "gandist.objectives.penalties:GradientPenalty",
    "dragan": "gandist.objectives.penalties:Dragan",
    "r1": "gandist.objectives.penalties:R1",
    "weight_clip": "gandist.objectives.penalties:WeightClip",
    "spectral_reg": "gandist.objectives.spectral_reg:SpectralReg",
    "bcr": "gandist.objectives.penalties:BalancedConsistency",
    "cr": "gandist.objectives.penalties:BalancedConsistency",
    "zcr": "gandist.objectives.logit_penalties:latent_consistency",
    "lecam": "gandist.objectives.logit_penalties:LeCam",
    "path_length": "gandist.objectives.penalties:PathLength",
    "ortho": "gandist.objectives.penalties:Ortho",
    "cutmix": "gandist.objectives.cutmix:CutMix",
}

# watchdog.<section> -> detector class, in the order they run (cheapest and most decisive first)
DETECTORS = {
    "nonfinite": "gandist.watchdog.detectors:NonfiniteDetector",
    "bounds": "gandist.watchdog.detectors:BoundsDetector",
    "spike": "gandist.watchdog.detectors:SpikeDetector",
    "sigma_growth": "gandist.watchdog.detectors:SigmaGrowthDetector",
    "d_overpower": "gandist.watchdog.detectors:DOverpowerDetector",
}

# eval.metrics -> what computes it (eval/periodic.py's Evaluator drives them; one file per metric family)
METRICS = {
    "fid": "gandist.eval.fid:frechet_distance",
    "kid": "gandist.eval.kid:kernel_inception_distance",
    "is": "gandist.eval.inception_score:InceptionScoreStats",
    "pr": "gandist.eval.precision_recall:precision_recall",
    "modes": "gandist.eval.modes:toy2d_coverage",  # stacked_digits_coverage beside it, picked by data.kind
    "intra_fid": "gandist.eval.intra_fid:intra_fid",
    "ppl": "gandist.eval.ppl:path_lengths",
}


def resolve(table: dict[str, str], name: str, what: str) -> Any:
    """Import and return the object registered under `name` in `table`."""
    if name not in table:
        raise KeyError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}")
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)
