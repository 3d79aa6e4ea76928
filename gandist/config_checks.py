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


def check_progressive(cfg) -> None:
    """ProGAN: a start below the data's resolution; strategies whose weights and Adam state the loop can touch."""
    grow = getattr(cfg.model, "progressive", None)
    if grow is None or not grow.enabled:
        return
    final = getattr(cfg.data, "resolution", None)
    if final is not None and grow.start_resolution >= final:
        raise ValueError(f"model.progressive.start_resolution={grow.start_resolution} is not below data.resolution="
                         f"{final}: nothing would grow; start lower (8) or set model.progressive.enabled=false")
    strategy = cfg.distributed.strategy
    if strategy == "zero3":
        # the lower levels' heads and the unused higher stages change from level to level, and ZeRO-3 fetches
        # partitioned weights by a trace of the modules each forward ran; it is not tested with growing nets
        raise ValueError("model.progressive under distributed.strategy=zero3 is not supported (the layers a forward "
                         "runs change at every level); use ddp, zero1 or zero2")
    if grow.reset_optim and strategy.startswith("zero"):
        raise ValueError(f"model.progressive.reset_optim clears torch Adam's moments, which distributed.strategy="
                         f"{strategy} keeps inside DeepSpeed's partitioned optimizer; use ddp, or reset_optim=false")
