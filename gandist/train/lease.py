"""One writer per run dir: a lease file (owner, host, pid, start, heartbeat) that rank 0 holds while it trains.

Two `gandist train` processes on one run dir would interleave checkpoints; the second is refused before any work
starts unless the first one's heartbeat is older than checkpoint.lease_timeout_s (it died: the lease is stale and
taken over with a warning) or the user passes --takeover. A restart of the same run (Ray restarting its worker
group, a re-run of a dead Ray driver) carries the same owner id and takes its own lease over.

Where: `RUN_DIR/lease.json`, or `CHECKPOINT_URL/lease.json` when checkpoint.url is set (the lease guards the place
the checkpoints go, which may be s3:// while the run dir is local). Any fsspec URL works; a local lease is replaced
atomically (temp file + rename), an object store's with a single PUT. After writing, the lease is read back: of two
processes starting at the same moment, the one whose write lost sees the other owner and is refused.

Why the heartbeat is a second file (`lease-beat-<owner hash>.json` beside the lease): the lease record is written
only when a process acquires it, so a holder's heartbeat can never overwrite a takeover that landed between its
read and its write (a read-modify-write of one file races; a write to a file only its owner writes does not). The
holder reads the lease before each heartbeat and before each checkpoint save and stops once another owner is named.
The heartbeat is wall-clock time of the holder's host; hosts sharing a run dir are assumed to keep NTP time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

import fsspec

from gandist.errors import UserError
from gandist.fileio import atomic_write_bytes

log = logging.getLogger("gandist.lease")
LEASE_NAME = "lease.json"


class LeaseHeld(UserError):
    """Another live process holds the run dir's lease."""


def lease_url(cfg, run_dir: str) -> str:
    """Where the lease of a run lives: beside its checkpoints' root (the run dir unless checkpoint.url is set)."""
    base = cfg.checkpoint.url or run_dir
    return f"{str(base).rstrip('/')}/{LEASE_NAME}"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(record: dict, now: float) -> str:
    """'host H pid P (owner O) since T, heartbeat N s ago' for messages."""
    age = now - float(record.get("heartbeat", 0))
    return (f"host {record.get('host')} pid {record.get('pid')} (owner {record.get('owner')}) since "
            f"{_when(float(record.get('start', 0)))}, last heartbeat {age:.0f}s ago")


class Lease:
    """The lease at `url` for owner id `owner`: acquire(), start() the heartbeat, release() at the end."""

    def __init__(self, url: str, timeout_s: float, owner: str | None = None, storage_options: dict | None = None):
        self.url, self.timeout_s = url, float(timeout_s)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fs, self.path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        protocol = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocol or "local" in protocol
        self.start_time = time.time()
        self.held = False
        self.lost: dict | None = None  # the record that replaced ours, when another process took the lease over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the file ---------------------------------------------------------------------------------------------
    def read(self) -> dict | None:
        """The lease record present, or None (no lease, or an unreadable one, which nobody can hold)."""
        self._fresh(self.path)
        try:
            with self.fs.open(self.path, "rb") as f:
                record = json.loads(f.read())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) and "owner" in record else None

    def beat_path(self, owner: str) -> str:
        """The heartbeat file of `owner`: written by that owner only."""
        digest = hashlib.sha256(owner.encode()).hexdigest()[:16]
        return f"{self.fs._parent(self.path)}/lease-beat-{digest}.json"

    def last_heartbeat(self, record: dict) -> float:
        """The newer of the record's own heartbeat (its acquisition) and its owner's heartbeat file."""
        t = float(record.get("heartbeat", 0))
        self._fresh(self.beat_path(str(record.get("owner"))))
        try:
            with self.fs.open(self.beat_path(str(record["owner"])), "rb") as f:
                t = max(t, float(json.loads(f.read())["heartbeat"]))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            pass
        return t

    def _fresh(self, path: str) -> None:
        """Forget what this filesystem object has cached about `path` and its folder: an object store's
        listing cache (s3fs) would otherwise answer "no such file" for a lease another process wrote since."""
        if not self.local:
            self.fs.invalidate_cache(self.fs._parent(path))
            self.fs.invalidate_cache(path)

    def _put(self, path: str, record: dict) -> None:
        data = json.dumps(record, indent=1).encode()
        if self.local:
            atomic_write_bytes(path, data)
        else:
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            with self.fs.open(path, "wb") as f:
                f.write(data)

    def _write(self) -> None:
        """The lease record: written once, when this process acquires the lease."""
        self._put(self.path, {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                              "start": self.start_time, "heartbeat": time.time(), "timeout_s": self.timeout_s})

    def _beat(self) -> None:
        self._put(self.beat_path(self.owner), {"owner": self.owner, "heartbeat": time.time()})

    def _remove(self, path: str) -> None:
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            pass

    # -- acquire / heartbeat / release ---------------------------------------------------------------------------
    def acquire(self, takeover: bool = False) -> None:
        """Take the lease, or raise LeaseHeld naming the live owner and how to take over."""
        now = time.time()
        other = self.read()
        if other is not None and other.get("owner") != self.owner:
            other = {**other, "heartbeat": self.last_heartbeat(other)}
            age = now - other["heartbeat"]
            if takeover:
                log.warning("%s: taking over the lease of %s (--takeover)", self.url, describe(other, now))
            elif age > self.timeout_s:
                log.warning("%s: the lease of %s is stale (no heartbeat for %.0fs > checkpoint.lease_timeout_s "
                            "%gs); taking it over", self.url, describe(other, now), age, self.timeout_s)
            else:
                raise LeaseHeld(self._held_message(other, now))
        elif other is not None:
            log.info("%s: taking over this run's own lease (a restart of the same run)", self.url)
        try:
            self._write()
        except OSError as err:  # a read-only run dir, a bucket without write access
            raise UserError(f"{self.url}: cannot write the run dir's lease ({err}); give a writable run dir or "
                            "checkpoint.url") from None
        back = self.read()  # two starts at once: the one whose write lost is refused here
        if back is None or back.get("owner") != self.owner:
            raise LeaseHeld(self._held_message(back or {}, time.time()))
        self.held = True
        if other is not None and other.get("owner") != self.owner:
            self._remove(self.beat_path(str(other["owner"])))  # the previous holder is dead or stopping

    def _held_message(self, other: dict, now: float) -> str:
        return (f"{self.url}: this run dir is in use by {describe(other, now)}; wait for that run to end, or stop "
                "it and pass --takeover to `gandist train` (a lease without a heartbeat for "
                f"checkpoint.lease_timeout_s={self.timeout_s:g}s is taken over by itself)")

    def _still_ours(self) -> bool:
        """Read the lease; on finding another owner, remember it (`lost`) and say so once. Caller holds _lock."""
        if not self.held:
            return False
        current = self.read()
        if current is not None and current.get("owner") != self.owner:
            self.lost, self.held = current, False
            log.error("%s: the lease was taken over by %s; this process stops writing checkpoints", self.url,
                      describe(current, time.time()))
            return False
        return True

    def heartbeat(self) -> bool:
        """Refresh this owner's heartbeat file; False (and `lost` set) when another process took the lease over."""
        with self._lock:
            if not self._still_ours():
                return False
            self._beat()
            return True

    def start(self) -> None:
        """Heartbeat every timeout/4 from a daemon thread (no cost in the training loop)."""
        interval = max(self.timeout_s / 4, 0.05)

        def beat():
            while not self._stop.wait(interval):
                try:
                    if not self.heartbeat():
                        return
                except Exception as err:  # noqa: BLE001 - a flaky store must not kill training; retry next beat
                    log.warning("%s: heartbeat failed (%s); retrying", self.url, err)

        self._thread = threading.Thread(target=beat, name="gandist-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseHeld when another process took the lease over: called before each checkpoint save, and when
        a save fails (another writer in the run dir explains the failure better than its OSError does). One read
        of the lease file; safe to race with the heartbeat because neither rewrites another owner's file."""
        with self._lock:
            if self.lost is None:
                self._still_ours()
        if self.lost is not None:
            raise LeaseHeld(f"{self.url}: the lease was taken over by {describe(self.lost, time.time())}; "
                            "this run stops so that only one process writes the run dir")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            was_held, self.held = self.held, False
            self._remove(self.beat_path(self.owner))  # ours alone, held or lost
            if was_held:
                current = self.read()
                if current is not None and current.get("owner") == self.owner:
                    self._remove(self.path)


def acquire_run_lease(cfg, run_dir: str, *, takeover: bool = False, owner: str | None = None) -> Lease:
    """Acquire and start the heartbeat of the lease guarding `run_dir` (rank 0 only)."""
    lease = Lease(lease_url(cfg, run_dir), cfg.checkpoint.lease_timeout_s, owner=owner)
    lease.acquire(takeover=takeover)
    lease.start()
    return lease
