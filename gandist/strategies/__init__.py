"""Strategies own everything distributed: single, ddp, zero1/2/3 (see base.py for the protocol)."""
from __future__ import annotations


def strategy_class(name: str) -> type:
    """The Strategy class of `distributed.strategy: name`; its capabilities are readable before building it."""
    from gandist.registry import STRATEGIES, resolve

    return resolve(STRATEGIES, name, "distributed.strategy").variant(name)


def build_strategy(cfg):
    """The strategy named by cfg.distributed.strategy (sets up the process group when one is needed)."""
    return strategy_class(cfg.distributed.strategy)(cfg)
