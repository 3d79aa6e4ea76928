"""Checkpoints: atomic, checksummed, on any fsspec URL, with retention and "healthy"/"best" tags.

Layout under the store's URL:
    step-00001200/shared.pt        rank 0: G, D, G-EMA, portable optimizer state, loop state
    step-00001200/rank-00000.pt    every rank: RNG states, data position, ZeRO partitions
    step-00001200/manifest.json    written after all files: step, sha256 of each, healthy, config hash, ...
    latest                         the newest step dir's name, written last
    best                           the best step dir's name (evaluation), when any
    best-ranked.json               the checkpoint.keep_best best steps with their ranking keys, best first
A checkpoint without a valid manifest (or with a file whose sha256 differs) does not exist: loading skips it with a
warning and takes the previous valid one.

Files are read with `torch.load(weights_only=True)`: a sha256 in the manifest catches truncation, not tampering, so a
file replaced in a shared bucket (its new sha256 written into the manifest) must not be able to run code. What is
saved is therefore tensors and plain types only (`to_plain` converts numpy values and refuses anything else at save
time), and `check_shared` / `check_rank_state` validate the structure of what was read, so that a file with the
right sha256 and the wrong contents is a CheckpointError naming the entry, never a KeyError later.
Format 1 (before this rule) held numpy/python RNG tuples; `gandist checkpoint convert RUN_DIR --trusted` rewrites
such a checkpoint as format 2 once its owner vouches for it.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import pickle
import re
import time
from dataclasses import dataclass

import fsspec
import numpy as np
import torch

from gandist.errors import CheckpointError
from gandist.fileio import atomic_write_bytes
from gandist.randomness import plain_rng_state

log = logging.getLogger("gandist.checkpoint")
STEP_DIR = re.compile(r"^step-(\d{8})$")
FORMAT_VERSION = 2  # 2: weights_only-loadable files (1: RNG states as numpy / python tuples)
CONVERT_HINT = ("if you trust where it came from, convert it with `gandist checkpoint convert RUN_DIR --trusted` "
                "(or the checkpoint folder's parent URL)")


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint: its manifest and the state files this rank needs."""

    step: int
    path: str
    manifest: dict
    shared: dict
    per_rank: dict | None


class OldFormatError(CheckpointError):
    """A checkpoint written before FORMAT_VERSION 2: refused until converted (resume does not fall back past it)."""


def step_name(step: int) -> str:
    return f"step-{step:08d}"


PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype)


def to_plain(value, where: str = "state"):
    """`value` as tensors, dicts, lists, tuples and scalars (numpy values converted); anything else is a bug here.

    Containers whose contents need no conversion are returned as they are (a module state_dict keeps _metadata).
    """
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, dict):
        items = {k: to_plain(v, f"{where}.{k}") for k, v in value.items()}
        if all(items[k] is v for k, v in value.items()):
            return value
        return collections.OrderedDict(items) if isinstance(value, collections.OrderedDict) else items
    if isinstance(value, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if all(a is b for a, b in zip(items, value)):
            return value
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{where}: a {type(value).__name__} cannot go into a checkpoint (weights_only=True loads only "
                    "tensors and plain types); convert it in its state_dict()")


# What shared.pt must hold (strategy weights and optimizer state, the loop counters, data_info for load_run, ...):
# a file with the right sha256 and wrong contents is refused here, naming the entry, instead of a KeyError later.
SHARED_ENTRIES = {"G": dict, "D": dict, "optim": dict, "loop": dict, "data_info": dict, "config": dict,
                  "data0": dict, "penalties": list}
OPTIONAL_ENTRIES = {"G_ema": dict, "watchdog": dict, "eval_best": list, "early_stop": dict, "lr_scale": dict, "scalers": dict}
LOOP_ENTRIES = {"step": int, "images_seen": int, "noise_epoch": int, "lr_factor": (int, float),
                "r1_factor": (int, float), "rollbacks": list}
DATA_INFO_ENTRIES = {"shape": list, "num_classes": int, "value_range": list}
RANK_ENTRIES = {"strategy": dict, "rng": dict, "data": dict}


def _names(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _check_entries(state, spec: dict, where: str, optional: dict | None = None) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: holds a {type(state).__name__}, not a dict of gandist state")
    missing = [k for k in spec if k not in state]
    if missing:
        raise CheckpointError(f"{where}: not a complete gandist checkpoint: missing {', '.join(missing)}")
    for key, kind in {**spec, **(optional or {})}.items():
        value = state.get(key)
        if key in state and not (value is None and key in (optional or {})) and (
                not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise CheckpointError(f"{where}: entry {key!r} is a {type(value).__name__}, expected {_names(kind)}")


def check_shared(state, where: str) -> dict:
    """Validate shared.pt's structure (the one place that knows it); returns it or raises CheckpointError."""
    _check_entries(state, SHARED_ENTRIES, where, OPTIONAL_ENTRIES)
    _check_entries(state["loop"], {k: v for k, v in LOOP_ENTRIES.items() if k != "rollbacks"}, f"{where}: loop",
                   {"rollbacks": list})
    _check_entries(state["data_info"], DATA_INFO_ENTRIES, f"{where}: data_info")
    for net in ("G", "D") + (("G_ema",) if state.get("G_ema") is not None else ()):
        bad = [k for k, v in state[net].items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{where}: {net}[{bad[0]!r}] is not a tensor")
    return state


def check_rank_state(state, where: str) -> dict:
    """Validate a rank-N.pt's structure; returns it or raises CheckpointError."""
    _check_entries(state, RANK_ENTRIES, where)
    rng = state["rng"]
    if not isinstance(rng.get("torch"), torch.Tensor) or not isinstance(rng.get("numpy"), dict) \
            or not isinstance(rng.get("python"), (list, tuple)):
        raise CheckpointError(f"{where}: entry 'rng' must hold torch (tensor), numpy (dict) and python (list) states")
    return state


def check_format(manifest: dict, where: str) -> None:
    """Refuse checkpoints this version cannot load safely, saying how to convert an old one."""
    fmt = manifest.get("format")
    if fmt == FORMAT_VERSION:
        return
    if isinstance(fmt, int) and fmt < FORMAT_VERSION:
        raise OldFormatError(f"{where}: written by an older gandist (checkpoint format {fmt}, this one reads "
                             f"{FORMAT_VERSION}) whose files cannot be loaded safely; {CONVERT_HINT}")
    raise CheckpointError(f"{where}: checkpoint format {fmt!r} is not one this gandist reads ({FORMAT_VERSION}); "
                          "upgrade gandist")


class CheckpointStore:
    """Reads and writes checkpoints under one fsspec URL (a local folder is a URL too)."""

    def __init__(self, url: str, keep_last: int = 3, storage_options: dict | None = None, keep_best: int = 1):
        self.url = url.rstrip("/")
        self.keep_last, self.keep_best = keep_last, keep_best
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # -- writing --------------------------------------------------------------------------------------------
    def _write_atomic(self, path: str, data: bytes) -> None:
        """temp file + fsync + rename (object stores: a single PUT, made visible by the manifest written last)."""
        if self.local:
            atomic_write_bytes(path, data)
        else:
            with self.fs.open(path, "wb") as f:
                f.write(data)

    def write_rank_file(self, step: int, name: str, state: dict) -> str:
        """Serialize `state` to step-N/name; returns its sha256 (every rank calls this for its own files)."""
        buffer = io.BytesIO()
        torch.save(to_plain(state, name), buffer)
        data = buffer.getvalue()
        self._write_atomic(f"{self.root}/{step_name(step)}/{name}", data)
        return hashlib.sha256(data).hexdigest()

    def commit(self, step: int, files: dict[str, str], meta: dict) -> str:
        """Rank 0, after every rank wrote its files: write the manifest, then the `latest` pointer, then prune."""
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files, "time": time.time(), **meta}
        self._write_atomic(f"{self.root}/{step_name(step)}/manifest.json", json.dumps(manifest, indent=1).encode())
        self._write_atomic(f"{self.root}/latest", step_name(step).encode())
        self.prune()
        return f"{self.url}/{step_name(step)}"

    def mark_best(self, step: int) -> None:
        """Tag a checkpoint as the best so far (kept by retention)."""
        self._write_atomic(f"{self.root}/best", step_name(step).encode())

    def ranked_best(self) -> list[dict]:
        """The `best-ranked.json` pointer file: up to keep_best {step, key} entries, best first (key: larger is
        better, as the evaluator ranks)."""
        try:
            with self.fs.open(f"{self.root}/best-ranked.json", "rb") as f:
                ranked = json.loads(f.read())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return []
        if not isinstance(ranked, list):
            return []
        return [r for r in ranked if isinstance(r, dict) and "step" in r and "key" in r]

    def ranks_among_best(self, key: list) -> bool:
        """Whether an evaluation ranked `key` earns its checkpoint a place among the keep_best best."""
        ranked = self.ranked_best()
        return len(ranked) < self.keep_best or list(key) > list(ranked[-1]["key"])

    def record_best(self, step: int, key: list) -> None:
        """Enter a checkpoint into `best-ranked.json` (the keep_best best, BigGAN-PyTorch's num_best_copies);
        the first of them is also the `best` pointer. Retention keeps every listed one."""
        ranked = [r for r in self.ranked_best() if r["step"] != step] + [{"step": step, "key": list(key)}]
        ranked = sorted(ranked, key=lambda r: list(r["key"]), reverse=True)[:self.keep_best]
        self._write_atomic(f"{self.root}/best-ranked.json", json.dumps(ranked).encode())
        if ranked[0]["step"] == step:
            self.mark_best(step)
        self.prune()

    def prune(self) -> None:
        """Keep the newest keep_last checkpoints, the newest healthy one and the best one; delete the rest."""
        steps = self.steps()
        keep = set(steps[-self.keep_last:])
        for s in reversed(steps):
            m = self.manifest(s)
            if m and m.get("healthy"):
                keep.add(s)
                break
        best = self._pointer("best")
        if best is not None:
            keep.add(best)
        keep.update(r["step"] for r in self.ranked_best())
        for s in steps:
            if s not in keep:
                try:
                    self.fs.rm(f"{self.root}/{step_name(s)}", recursive=True)
                except FileNotFoundError:
                    pass
                except OSError as err:  # another writer is filling it (a takeover's race): pruning is best-effort
                    log.warning("%s: could not prune %s (%s); left for the next save", self.root, step_name(s), err)

    # -- reading --------------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps of the checkpoint folders present (valid or not), ascending."""
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = [STEP_DIR.match(os.path.basename(e.rstrip("/"))) for e in entries]
        return sorted(int(m.group(1)) for m in found if m)

    def _pointer(self, name: str) -> int | None:
        try:
            with self.fs.open(f"{self.root}/{name}", "rb") as f:
                m = STEP_DIR.match(f.read().decode().strip())
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        return int(m.group(1)) if m else None

    def manifest(self, step: int) -> dict | None:
        """The manifest of a checkpoint, or None when it has none (then it does not exist)."""
        try:
            with self.fs.open(f"{self.root}/{step_name(step)}/manifest.json", "rb") as f:
                manifest = json.loads(f.read())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("step") == step else None

    def valid_steps(self, healthy_only: bool = False) -> list[int]:
        """Steps with a readable manifest (not yet checksum-verified), ascending."""
        out = []
        for s in self.steps():
            m = self.manifest(s)
            if m and (m.get("healthy") or not healthy_only):
                out.append(s)
        return out

    def _read_verified(self, step: int, name: str, manifest: dict) -> dict:
        path = f"{self.root}/{step_name(step)}/{name}"
        want = manifest["files"].get(name)
        if want is None:
            raise CheckpointError(f"{self.url}/{step_name(step)}: manifest lists no file {name}")
        try:
            with self.fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: file missing") from None
        if hashlib.sha256(data).hexdigest() != want:
            raise CheckpointError(f"{path}: sha256 mismatch (truncated or corrupted)")
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # weights_only refused a global: the file wants to build objects
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain types, which "
                                  f"gandist never saves ({first[:200]})") from None
        except Exception as err:  # noqa: BLE001 - any other unpickling failure means the file is unusable
            raise CheckpointError(f"{path}: cannot be read ({err})") from None

    def load(self, step: int, rank: int | None = 0) -> LoadedCheckpoint:
        """Load and verify one checkpoint; raises CheckpointError naming the file and the problem."""
        manifest = self.manifest(step)
        where = f"{self.url}/{step_name(step)}"
        if manifest is None:
            raise CheckpointError(f"{where}: no valid manifest.json (incomplete checkpoint)")
        check_format(manifest, where)
        if not isinstance(manifest.get("files"), dict):
            raise CheckpointError(f"{where}/manifest.json: 'files' must map file names to sha256")
        shared = check_shared(self._read_verified(step, "shared.pt", manifest), f"{where}/shared.pt")
        per_rank = None
        if rank is not None:
            name = f"rank-{rank:05d}.pt"
            if name in manifest["files"]:
                per_rank = check_rank_state(self._read_verified(step, name, manifest), f"{where}/{name}")
        return LoadedCheckpoint(step, f"{self.url}/{step_name(step)}", manifest, shared, per_rank)

    def load_newest(self, rank: int | None = 0, healthy_only: bool = False, at_most: int | None = None,
                    which: str = "latest") -> LoadedCheckpoint | None:
        """The newest checkpoint that verifies (skipping broken ones with a warning), or None if there is none.

        which: "latest", "best", or a step number as a string.
        """
        if which == "best":
            best = self._pointer("best")
            if best is None:
                raise CheckpointError(f"{self.url}: no checkpoint is tagged best (evaluation never ran)")
            return self.load(best, rank)
        if which not in ("latest", None):
            try:
                return self.load(int(which), rank)
            except ValueError:
                raise CheckpointError(f"--checkpoint {which!r}: give a step number, 'latest' or 'best'") from None
        candidates = [s for s in self.valid_steps(healthy_only) if at_most is None or s <= at_most]
        broken = sorted(set(self.steps()) - set(self.valid_steps()))
        for s in broken:
            log.warning("%s/%s: no valid manifest; ignored", self.url, step_name(s))
        for s in reversed(candidates):
            try:
                return self.load(s, rank)
            except OldFormatError:
                raise  # falling back past it would train from scratch over a run the user wants to keep
            except CheckpointError as err:
                log.warning("%s; falling back to the previous checkpoint", err)
        return None


def convert_old_checkpoints(url: str) -> list[str]:
    """Rewrite every format-1 checkpoint under `url` as format 2 (trusted files only: this unpickles them)."""

    store = CheckpointStore(url)
    done = []
    for step in store.steps():
        manifest = store.manifest(step)
        if manifest is None or manifest.get("format", 1) >= FORMAT_VERSION:
            continue
        where = f"{store.root}/{step_name(step)}"
        files = {}
        for name, want in manifest.get("files", {}).items():
            with store.fs.open(f"{where}/{name}", "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != want:
                raise CheckpointError(f"{where}/{name}: sha256 mismatch (truncated or corrupted); not converted")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)  # the user vouched
            if isinstance(state, dict) and isinstance(state.get("rng"), dict):
                state["rng"] = plain_rng_state(state["rng"])
            files[name] = store.write_rank_file(step, name, state)
        manifest.update(format=FORMAT_VERSION, files=files)
        store._write_atomic(f"{where}/manifest.json", json.dumps(manifest, indent=1).encode())
        done.append(step_name(step))
    return done
