"""Checkpoints: atomic, checksummed, on any fsspec URL, with retention and "healthy"/"best" tags.

Layout under the store's URL:
    step-00001200/shared.pt        rank 0: G, D, G-EMA, portable optimizer state, loop state
    step-00001200/rank-00000.pt    every rank: RNG states, data position, ZeRO partitions
    step-00001200/manifest.json    written after all files: step, sha256 of each, healthy, config hash, ...
    latest                         the newest step dir's name, written last
    best                           the best step dir's name (evaluation), when any
A checkpoint without a valid manifest (or with a file whose sha256 differs) does not exist: loading skips it with a
warning and takes the previous valid one.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass

import fsspec
import torch

from gandist.errors import CheckpointError
from gandist.fileio import atomic_write_bytes

log = logging.getLogger("gandist.checkpoint")
STEP_DIR = re.compile(r"^step-(\d{8})$")
FORMAT_VERSION = 1


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint: its manifest and the state files this rank needs."""

    step: int
    path: str
    manifest: dict
    shared: dict
    per_rank: dict | None


def step_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointStore:
    """Reads and writes checkpoints under one fsspec URL (a local folder is a URL too)."""

    def __init__(self, url: str, keep_last: int = 3, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.keep_last = keep_last
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
        torch.save(state, buffer)
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

    def prune(self) -> None:
        """Keep the newest keep_last checkpoints, the newest healthy one and the best one; delete the rest."""
        steps = self.steps()
        keep = set(steps[-self.keep_last:])
        for s in reversed(steps):
            m = self._manifest(s)
            if m and m.get("healthy"):
                keep.add(s)
                break
        best = self._pointer("best")
        if best is not None:
            keep.add(best)
        for s in steps:
            if s not in keep:
                try:
                    self.fs.rm(f"{self.root}/{step_name(s)}", recursive=True)
                except FileNotFoundError:
                    pass

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

    def _manifest(self, step: int) -> dict | None:
        try:
            with self.fs.open(f"{self.root}/{step_name(step)}/manifest.json", "rb") as f:
                manifest = json.loads(f.read())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("step") == step else None

    def manifest(self, step: int) -> dict | None:
        """The manifest of a checkpoint, or None when it has none (then it does not exist)."""
        return self._manifest(step)

    def valid_steps(self, healthy_only: bool = False) -> list[int]:
        """Steps with a readable manifest (not yet checksum-verified), ascending."""
        out = []
        for s in self.steps():
            m = self._manifest(s)
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
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
            raise CheckpointError(f"{path}: cannot be read ({err})") from None

    def load(self, step: int, rank: int | None = 0) -> LoadedCheckpoint:
        """Load and verify one checkpoint; raises CheckpointError naming the file and the problem."""
        manifest = self._manifest(step)
        if manifest is None:
            raise CheckpointError(f"{self.url}/{step_name(step)}: no valid manifest.json (incomplete checkpoint)")
        shared = self._read_verified(step, "shared.pt", manifest)
        per_rank = None
        if rank is not None:
            name = f"rank-{rank:05d}.pt"
            if name in manifest["files"]:
                per_rank = self._read_verified(step, name, manifest)
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
            except CheckpointError as err:
                log.warning("%s; falling back to the previous checkpoint", err)
        return None
