"""Strategies own everything distributed: single, ddp, zero1/2/3 (see base.py for the protocol)."""
from __future__ import annotations


def build_strategy(cfg):
    """The strategy named by cfg.distributed.strategy (sets up the process group when one is needed)."""
    from gandist.registry import STRATEGIES, resolve

    return resolve(STRATEGIES, cfg.distributed.strategy, "distributed.strategy")(cfg)
