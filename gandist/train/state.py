"""The checkpointer: saves and restores a run's stateful parts through a CheckpointStore (exact resume, rollback).

It is handed objects with `state_dict()` / `load_state_dict()` (the loop's counters, EMA, penalties, watchdog,
evaluator, data position, RNGs) and the strategy (weights and optimizers, plus the collectives a save needs), and it
decides when a save is due. It knows nothing of the trainer: tests drive it with fakes.

Where each part goes: `shared` parts are written by rank 0 into shared.pt under their name; `per_rank` parts by
every rank into rank-N.pt. A per-rank part restores only at the same world size; one with a `fallback` name also has
rank 0's copy in shared.pt, which every rank loads at another world size (synthetic sources share one position).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from gandist.checkpoint import CheckpointStore
from gandist.errors import CheckpointError
from gandist.randomness import rng_state, set_rng_state

log = logging.getLogger("gandist.train")


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class Part:
    """A stateful object and when it comes back: on resume always; on a watchdog rollback only if `on_rollback`
    (the watchdog's history and the best evaluation so far outlive a rollback). `kept_on_rollback`: keys of its state
    that a rollback does not restore (the loop's rollback history)."""

    obj: Stateful | None
    on_rollback: bool = True
    kept_on_rollback: tuple[str, ...] = ()


class StatefulList:
    """A list of stateful objects (the penalties) as one part."""

    def __init__(self, items: list):
        self.items = items

    def state_dict(self) -> list:
        return [item.state_dict() for item in self.items]

    def load_state_dict(self, states: list) -> None:
        for item, state in zip(self.items, states):
            item.load_state_dict(state)


class GlobalRng:
    """This process's torch, numpy and python RNGs, as tensors and plain types."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


@dataclass
class Saved:
    """What one save did: the checkpoint's URL (the same on every rank), its health tag and the seconds it took."""

    url: str
    healthy: bool
    seconds: float


class Checkpointer:
    """Saves and restores the parts it is handed; `due(step)` says when a periodic save is."""

    def __init__(self, store: CheckpointStore, strategy, *, every: int, last_step: int, shared: dict[str, Part],
                 per_rank: dict[str, Stateful], fallback: dict[str, str] | None = None,
                 constants: dict | None = None, meta: dict | None = None,
                 healthy: Callable[[int], bool] = lambda step: True, before_save: Callable[[], None] | None = None,
                 before_commit: Callable[[], None] | None = None):
        self.store, self.strategy = store, strategy
        self.every, self.last_step = every, last_step
        self.shared, self.per_rank = shared, per_rank
        self.fallback = fallback or {}  # per-rank part name -> its name in shared.pt
        self.constants = constants or {}  # written into shared.pt, never loaded back (config, data_info)
        self.meta = meta or {}  # manifest entries; "arch" is checked on load
        self.healthy, self.before_save = healthy, before_save
        self.before_commit = before_commit  # rank 0, once every file is written and before the checkpoint exists
        self.resumed: dict = {}  # set by resume(): the world size and path of the checkpoint resumed from
        self.saved_step: int | None = None  # the step of this process's last save (None after a restore)

    def due(self, step: int) -> bool:
        """A periodic save: every `checkpoint.every` steps and at the last step."""
        return step % self.every == 0 or step == self.last_step

    # -- save ------------------------------------------------------------------------------------------------
    def save(self, step: int) -> Saved:
        """Every rank writes its files, rank 0 the shared one and the manifest; a collective call."""
        s = self.strategy
        if self.before_save is not None:
            self.before_save()  # e.g. the run dir's lease: a process that lost it writes nothing more
        t0 = time.perf_counter()
        strategy_shared, strategy_rank = s.state_dict()  # every rank takes part (ZeRO gathers)
        healthy = bool(self.healthy(step))
        rank_state = {"strategy": strategy_rank, **{k: part.state_dict() for k, part in self.per_rank.items()}}
        # every rank's copy of the parts a resume at another world size loads from shared.pt (the data position:
        # a shard stream needs every rank's to finish the interrupted epoch), merged by the part's own rule
        fallbacks = {key: rank_state[key] for key in self.fallback}
        every_rank = s.all_gather_object(fallbacks) if fallbacks and s.world_size > 1 else [fallbacks]
        name = f"rank-{s.rank:05d}.pt"
        files = {name: self.store.write_rank_file(step, name, rank_state)}
        if s.rank == 0:
            shared = dict(strategy_shared)
            for key, part in self.shared.items():
                shared[key] = part.obj.state_dict() if part.obj is not None else None
            for key, shared_key in self.fallback.items():
                merge = getattr(self.per_rank[key], "merge_rank_states", None)
                states = [ranks[key] for ranks in every_rank]
                shared[shared_key] = merge(states) if merge is not None else rank_state[key]
            shared.update(self.constants)
            files["shared.pt"] = self.store.write_rank_file(step, "shared.pt", shared)
        all_files = {}
        for part in s.all_gather_object(files):
            all_files.update(part)
        url = None
        if s.rank == 0:
            if self.before_commit is not None:
                self.before_commit()  # e.g. a URL run dir's logs: pushed before the checkpoint they lead up to
            url = self.store.commit(step, all_files, {"healthy": healthy, **self.meta, "world_size": s.world_size})
        url = s.broadcast_object(url)
        self.saved_step = step
        return Saved(url, healthy, time.perf_counter() - t0)

    def mark_best(self, step: int, key: list | None = None) -> None:
        """Rank 0: rank this step's checkpoint among the keep_best best (key given), else tag it best."""
        if self.strategy.rank == 0:
            self.store.record_best(step, key) if key is not None else self.store.mark_best(step)

    # -- restore ---------------------------------------------------------------------------------------------
    def _load_agreed(self, **kwargs):
        """Rank 0 picks the checkpoint (newest that verifies); every rank loads that one."""
        s = self.strategy
        step = None
        if s.rank == 0:
            found = self.store.load_newest(rank=0, **kwargs)  # rank 0's own file is verified in the choice too
            step = found.step if found else None
        step = s.broadcast_object(step)
        return None if step is None else self.store.load(step, rank=s.rank)

    def _apply(self, ckpt, rollback: bool) -> None:
        arch = self.meta.get("arch")
        if ckpt.manifest.get("arch") not in (None, arch):
            raise CheckpointError(f"{ckpt.path}: holds a {ckpt.manifest['arch']} model, the config builds {arch}")
        self.strategy.load_state_dict(ckpt.shared, (ckpt.per_rank or {}).get("strategy"))
        self.saved_step = None
        for key, part in self.shared.items():
            state = ckpt.shared.get(key)
            if part.obj is None or state is None or (rollback and not part.on_rollback):
                continue
            if rollback and part.kept_on_rollback:
                state = {k: v for k, v in state.items() if k not in part.kept_on_rollback}
            part.obj.load_state_dict(state)
        same_world = ckpt.manifest.get("world_size") == self.strategy.world_size
        for key, part in self.per_rank.items():
            if ckpt.per_rank is not None and same_world:
                part.load_state_dict(ckpt.per_rank[key])
            elif key in self.fallback:
                part.load_state_dict(ckpt.shared[self.fallback[key]])

    def resume(self) -> int | None:
        """Continue from the newest valid checkpoint, if any; returns its step."""
        ckpt = self._load_agreed()
        if ckpt is None:
            return None
        self._apply(ckpt, rollback=False)
        # what the loop's `resize` event reports: the world size the checkpoint was written at, and where it is
        self.resumed = {"world_size": ckpt.manifest.get("world_size"), "checkpoint": str(ckpt.path)}
        if self.strategy.rank == 0:
            log.info("resumed from %s", ckpt.path)
        return ckpt.step

    def restore_healthy(self, at_most: int) -> int | None:
        """Roll back to the newest checkpoint marked healthy, at most `at_most`; returns its step."""
        ckpt = self._load_agreed(healthy_only=True, at_most=at_most)
        if ckpt is None:
            return None
        self._apply(ckpt, rollback=True)
        return ckpt.step
