"""The run directory: resolved config (checked on resume), metrics.jsonl and events.jsonl."""
from __future__ import annotations

import json
import math
import os
import time

import yaml

from gandist.errors import UserError
from gandist.fileio import atomic_write_text


def claim_run_dir(cfg, run_dir: str, *, force: bool, takeover: bool, owner: str | None, remote=None):
    """Rank 0's start in a run dir: check it, take its lease (one writer per run dir) before the first file is
    written, so that a refusal changes nothing, then write the resolved config. Returns the lease.

    remote: the RemoteRunDir of a URL run dir (remote_run_dir.py); `run_dir` is then its URL, the config is checked
    there, and the staging folder is refilled from it once the lease is held."""
    from gandist.train.lease import acquire_run_lease

    if remote is None:
        check_run_dir(cfg, run_dir, force)
    else:
        remote.check_writable()
        check_config_text(cfg, remote.read_text("config.yaml"), f"{remote.url}/config.yaml", run_dir, force)
    lease = acquire_run_lease(cfg, run_dir, takeover=takeover, owner=owner)
    try:
        if remote is not None:
            remote.pull()
        write_run_config(cfg, remote.staging if remote is not None else run_dir)
        if remote is not None:
            remote.push()
    except BaseException:  # a failed start leaves the run dir free for the next attempt
        lease.release()
        raise
    return lease


def write_run_config(cfg, run_dir: str) -> None:
    """Write the resolved config.yaml (after check_run_dir and after taking the run dir's lease)."""
    atomic_write_text(os.path.join(run_dir, "config.yaml"), cfg.to_yaml())


def check_run_dir(cfg, run_dir: str, force: bool) -> None:
    """Create run_dir (writable) and refuse one whose config differs unless force; writes no file."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as err:
        raise UserError(f"--run-dir {run_dir}: cannot be created ({err.strerror}); give a writable folder") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(f"--run-dir {run_dir}: not writable by this user; give a writable folder") from None
    path = os.path.join(run_dir, "config.yaml")
    check_config_text(cfg, open(path).read() if os.path.exists(path) else None, path, run_dir, force)


def check_config_text(cfg, text: str | None, path: str, run_dir: str, force: bool) -> None:
    """Refuse a run dir whose config.yaml (its text, None when absent) differs from `cfg`, unless force."""
    from gandist.config import config_from_dict

    if text is None:
        return
    try:
        old = config_from_dict(yaml.safe_load(text) or {}, path)
    except Exception as err:  # noqa: BLE001 - an unreadable old config is reported, never overwritten silently
        if not force:
            raise UserError(f"{path}: existing config cannot be read ({err}); pass --force to replace it") from None
        return
    if old.hash() != cfg.hash() and not force:
        raise UserError(
            f"{run_dir}: holds a run with a different config ({changed_keys(old, cfg)}); use another --run-dir,"
            " or --force to continue it with the new config")


def changed_keys(old, new, limit: int = 4) -> str:
    """A short description of which keys differ between two configs."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old.model_dump(mode="json")), flat(new.model_dump(mode="json"))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:limit])
    return shown + (f", and {len(diff) - limit} more" if len(diff) > limit else "")


def _clean(value):
    """JSON-safe: non-finite floats become strings ('nan', 'inf')."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JsonlWriter:
    """Appends one JSON object per line, flushed at once so a crash loses at most the line being written."""

    def __init__(self, path: str | None):
        self.file = open(path, "a", buffering=1) if path else None

    def write(self, record: dict) -> None:
        if self.file:
            self.file.write(json.dumps(_clean({"time": round(time.time(), 3), **record})) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
