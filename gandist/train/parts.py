"""The trainer's nets, its optional subsystems (ADA, growth, watchdog, telemetry sinks, evaluator) and its
checkpointer, built from config.

It exists so that the loop reads as the step and the run: what is built, and which of the run's parts the
checkpointer saves, is decided here once.
"""
from __future__ import annotations

import logging

import torch

from gandist.checkpoint import CheckpointStore
from gandist.models.base import BuildContext
from gandist.registry import ARCHS, resolve
from gandist.remote_run_dir import checkpoint_root
from gandist.train.state import Checkpointer, GlobalRng, Part, StatefulList

log = logging.getLogger("gandist.train")


def build_nets(cfg, info, strategy, is_main: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D of model.arch, identical on every rank; cross-replica BN is handed the strategy's process group."""
    group = strategy.process_group if cfg.distributed.cross_replica_bn else None
    if cfg.distributed.cross_replica_bn and strategy.world_size == 1 and is_main:
        log.warning("distributed.cross_replica_bn with one process: plain batch norm statistics are used")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    G, D = resolve(ARCHS, cfg.model.arch, "model.arch")(cfg.model, info, BuildContext(group, cfg.augment.pack))
    if cfg.train.channels_last and info.is_image:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    return G, D


def build_ada(cfg):
    """augment.ada's controller of the augmentation probability p, or None."""
    if cfg.augment.ada is None:
        return None
    from gandist.objectives.ada import AdaController

    return AdaController(cfg.augment.ada, cfg.train.batch_size)


def build_growth(cfg, info):
    """Progressive growing (ProGAN): the level and fade-in alpha follow images_seen; None when it is off."""
    grow = getattr(cfg.model, "progressive", None)
    if grow is None or not grow.enabled:
        return None
    from gandist.train.growth import Growth

    return Growth(grow, info.shape[-1])


def build_watchdog(cfg, strategy):
    if not cfg.watchdog.enabled:
        return None
    from gandist.watchdog import Watchdog

    return Watchdog(cfg.watchdog, rank=strategy.rank, world_size=strategy.world_size)


def build_sinks(cfg, strategy, run_dir: str, is_main: bool) -> list:
    sinks = []
    if cfg.telemetry.port:  # 0: no Prometheus endpoint
        from gandist.telemetry.metrics import MetricsExporter

        sinks.append(MetricsExporter(cfg.telemetry, run=cfg.name, rank=strategy.rank, local_rank=strategy.local_rank))
    if is_main and cfg.telemetry.tensorboard:
        from gandist.telemetry.tensorboard import make_tensorboard_sink

        sink = make_tensorboard_sink(run_dir, every=cfg.telemetry.log_every)
        if sink is not None:
            sinks.append(sink)
    return sinks


def build_evaluator(cfg, run_dir: str):
    if not cfg.eval.every:
        return None
    from gandist.eval.periodic import Evaluator

    return Evaluator(cfg, run_dir)


def build_checkpointer(tr) -> Checkpointer:
    """The checkpointer of trainer `tr`, handed the run's stateful parts (the trainer's own: its loop counters)."""
    cfg, info = tr.cfg, tr.info
    store = CheckpointStore(checkpoint_root(cfg, tr.run_url), cfg.checkpoint.keep_last,
                            keep_best=cfg.checkpoint.keep_best)
    return Checkpointer(
        store, tr.strategy, every=cfg.checkpoint.every, last_step=cfg.train.steps,
        shared={"G_ema": Part(tr.G_ema), "loop": Part(tr, kept_on_rollback=("rollbacks",)),
                "penalties": Part(StatefulList(tr.penalties)), "ada": Part(tr.ada),
                "watchdog": Part(tr.watchdog, on_rollback=False),
                # the best evaluation so far: a resumed run must not tag a worse checkpoint "best"
                "eval_best": Part(tr.evaluator, on_rollback=False),
                "early_stop": Part(getattr(tr.evaluator, "early_stop", None), on_rollback=False)},
        per_rank={"data": tr.loader, "rng": GlobalRng()}, fallback={"data": "data0"},
        constants={"config": cfg.model_dump(mode="json"),
                   "data_info": {"shape": list(info.shape), "num_classes": info.num_classes,
                                 "value_range": list(info.value_range)}},
        meta={"config_hash": cfg.hash(), "strategy": cfg.distributed.strategy, "arch": cfg.model.arch},
        healthy=tr.watchdog.healthy if tr.watchdog else (lambda step: True),
        before_save=tr.lease.check if tr.lease is not None else None,
        # a URL run dir: the logs reach the URL before the checkpoint is committed, so that a process killed between
        # the two leaves lines the restart trains again (duplicates), never a gap (remote_run_dir.py)
        before_commit=tr.remote.push_or_warn if tr.remote is not None and tr.is_main else None)
