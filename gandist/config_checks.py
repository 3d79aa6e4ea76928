"""Cross-section checks of techniques that span model, data, loss and distribution (ACGAN, progressive growing).

Kept out of config.py (which stays the sections and their wiring) and free of torch; each raises ValueError with
one line naming the keys and the fix, which config validation turns into a ConfigError.
"""
from __future__ import annotations


def check_auxiliary_d(cfg) -> None:
    """ACGAN's class head needs labels: a conditional model on labelled data, D seeing one sample at a time."""
    if getattr(cfg.model, "d_conditioning", "projection") != "auxiliary":
        return
    unlabelled = cfg.data.kind == "webdataset" and cfg.data.num_classes == 0
    if not cfg.model.conditional or unlabelled:
        why = "model.conditional=false" if not cfg.model.conditional else "data.num_classes=0 (unconditional data)"
        raise ValueError(f"model.d_conditioning=auxiliary trains a class head on the labels, but {why}; use "
                         "labelled data with model.conditional=true, or model.d_conditioning=projection")
    if cfg.augment.pack > 1:
        raise ValueError(f"model.d_conditioning=auxiliary needs one label per D input, but augment.pack="
                         f"{cfg.augment.pack} stacks samples (D then sees no labels); set augment.pack=1")
