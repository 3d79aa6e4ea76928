"""A run dir on an object store or any other fsspec URL (`--run-dir s3://bucket/runs/x`), for nodes that share no disk.

Checkpoints and the lease go to the URL directly (their writes are already object-store safe: one PUT per file, the
manifest last). The run's other files (config.yaml, metrics.jsonl, events.jsonl, samples/, eval/, the watchdog's
report) are written as usual into a local *staging* folder on the node of rank 0 and pushed to the URL:

- at start, rank 0 (after it took the lease, so no other writer exists) empties its staging folder and pulls the
  run's logs from the URL, so a rank 0 on another node than last time appends to the whole history;
- before each checkpoint is committed, after every event (start, checkpoint, resize, eval, rollback, preempted,
  end) and when the run closes, crash or not, rank 0 pushes each file that changed since its last push (a
  whole-file PUT: object stores cannot append).

So the URL's logs always reach the newest checkpoint. A process killed outright loses only lines past it, which
the restart trains again: the URL's metrics.jsonl has every step, and a step twice only when a process died between
a push and the commit that followed it (at most one checkpoint interval).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil

import fsspec

from gandist.errors import UserError

log = logging.getLogger("gandist.train")

STAGING_ENV = "GANDIST_STAGING_DIR"  # where local staging folders of URL run dirs live (default ~/.cache/gandist/runs)
PULLED = ("config.yaml", "metrics.jsonl", "events.jsonl", "eval/metrics.jsonl")  # what a restart appends to


def is_remote(run_dir: str) -> bool:
    """A URL run dir (s3://, gs://, memory://, ...); plain paths and file:// URLs are local folders."""
    return "://" in str(run_dir) and not str(run_dir).startswith("file://")


def join(run_dir: str, *names: str) -> str:
    """run_dir/names for a folder or a URL."""
    return "/".join([str(run_dir).rstrip("/"), *names]) if is_remote(run_dir) else os.path.join(run_dir, *names)


def checkpoint_root(cfg, run_dir: str) -> str:
    """Where a run's checkpoints live: checkpoint.url, else RUN_DIR/checkpoints (a URL when the run dir is one)."""
    return cfg.checkpoint.url or join(run_dir, "checkpoints")


def run_name(url: str) -> str:
    """The run dir's base name (its last path component)."""
    return url.rstrip("/").rsplit("/", 1)[-1] or "run"


def read_run_file(run_dir: str, name: str) -> str | None:
    """The text of RUN_DIR/name, a folder or a URL (None when absent)."""
    if not is_remote(run_dir):
        path = os.path.join(run_dir, name)
        return open(path).read() if os.path.isfile(path) else None
    fs, root = fsspec.core.url_to_fs(str(run_dir).rstrip("/"))
    return _read_text(fs, f"{root}/{name}")


def _read_text(fs, path: str) -> str | None:
    """A file's text from an fsspec filesystem, None when absent."""
    fs.invalidate_cache(path)  # s3fs's listing cache can say "absent" for a file written since
    try:
        with fs.open(path, "rb") as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def fetch_run_files(url: str, dest: str) -> int:
    """Copy a URL run dir's files (not its checkpoints, lease or Ray's pointers) into `dest`, for a report or an
    eval that reads a folder; returns how many were copied."""
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    if not fs.exists(f"{root}/config.yaml"):
        raise UserError(f"{url}: not a gandist run dir (no config.yaml); give the --run-dir of a training run")
    copied = 0
    for path in fs.find(root):
        rel = path[len(root):].lstrip("/")
        top = rel.split("/", 1)[0]
        if top == "checkpoints" or top.startswith(("ray-step-", "lease")) or ".tmp-" in rel:
            continue
        local = os.path.join(dest, *rel.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fs.get_file(path, local)
        copied += 1
    return copied


def staging_dir(url: str) -> str:
    """This node's staging folder for a URL run dir: one per URL, so a node that was rank 0 before reuses it."""
    base = os.environ.get(STAGING_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "gandist", "runs")
    return os.path.join(base, f"{run_name(url)}-{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:12]}")


class RemoteRunDir:
    """The URL of a run dir and this node's staging folder for it (rank 0 pulls and pushes; other ranks only stage)."""

    def __init__(self, url: str, staging: str | None = None):
        self.url = url.rstrip("/")
        self.staging = staging or staging_dir(self.url)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as err:
            raise UserError(f"--run-dir {url}: cannot open this URL ({err}); install the fsspec backend for it "
                            "(s3fs for s3://, gcsfs for gs://) or give a local folder") from None
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) at its last push
        os.makedirs(self.staging, exist_ok=True)

    def read_text(self, name: str) -> str | None:
        """A run file straight from the URL (None when absent)."""
        return _read_text(self.fs, f"{self.root}/{name}")

    def check_writable(self) -> None:
        """Fail before any work when the URL cannot be listed (no bucket, no credentials, no endpoint)."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if not set(protocols) & {"s3", "s3a", "gs", "gcs"}:
            return
        try:
            self.fs.ls(self.root.split("/", 1)[0])
        except FileNotFoundError:
            raise UserError(f"--run-dir {self.url}: its bucket does not exist; create it or fix the URL") from None
        except Exception as err:  # noqa: BLE001 - botocore's many credential and endpoint errors, named below
            raise UserError(f"--run-dir {self.url}: cannot reach it ({type(err).__name__}: {err}); check the "
                            "credentials and endpoint (AWS_ENDPOINT_URL for an S3-compatible store)") from None

    def pull(self) -> None:
        """Replace the staging folder's contents with the run's logs from the URL (rank 0, holding the lease)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        os.makedirs(self.staging, exist_ok=True)
        self._pushed = {}
        for name in PULLED:
            text = self.read_text(name)
            if text is None:
                continue
            local = os.path.join(self.staging, name)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with open(local, "w") as f:
                f.write(text)
            self._pushed[name] = _signature(local)

    def push(self) -> int:
        """Upload every staged file that changed since the last push; returns how many were uploaded."""
        uploaded = 0
        for folder, _, files in os.walk(self.staging):
            for file in files:
                local = os.path.join(folder, file)
                rel = os.path.relpath(local, self.staging).replace(os.sep, "/")
                if ".tmp-" in file:  # an atomic write in progress (fileio.py)
                    continue
                try:
                    signature = _signature(local)
                    if self._pushed.get(rel) == signature:
                        continue
                    with open(local, "rb") as f:
                        data = f.read()
                except FileNotFoundError:  # replaced or removed while we walked
                    continue
                with self.fs.open(f"{self.root}/{rel}", "wb") as f:
                    f.write(data)
                self._pushed[rel] = signature
                uploaded += 1
        return uploaded

    def push_or_warn(self) -> None:
        """push(), but a failed upload (a store's bad minute) only warns: training goes on, and the next push
        uploads whatever is still unpushed (the checkpoints, which matter, fail loudly on their own)."""
        try:
            self.push()
        except Exception as err:  # noqa: BLE001 - botocore, aiohttp and OS errors alike
            log.warning("could not push the run's files to %s (%s: %s); retrying at the next event", self.url,
                        type(err).__name__, err)


def _signature(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
