"""`gandist train CONFIG --ray`: the gandist loop inside Ray Train's TorchTrainer (Ray Train V2 conventions).

Ray decides where the workers run and restarts the whole group when one dies (FailureConfig.max_failures =
distributed.max_failures); it has already set up torch.distributed (gloo on CPU, NCCL on GPU) when the loop starts,
and gandist's strategies reuse that process group. Checkpoints stay gandist's own (`RUN_DIR/checkpoints/step-N`,
one format whatever launched the run); each is reported to Ray so that Ray's bookkeeping and restarts see it, but
a restarted worker resumes from gandist's own `latest` pointer.

RunConfig(storage_path = RUN_DIR's parent, name = RUN_DIR's base name) makes Ray's experiment folder the run dir
itself, so a driver that died is resumed by running the same command again.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time
from urllib.parse import urlparse

from gandist.errors import UserError
from gandist.config import ExperimentConfig

RESIZE_INTERVAL_ENV = "GANDIST_RAY_RESIZE_INTERVAL"  # seconds between Ray's checks for room to grow the group
DEFAULT_RESIZE_INTERVAL_S = 60.0
PENDING_TIMEOUT_ENV = "GANDIST_RAY_PENDING_TIMEOUT"  # seconds to wait for Ray to place the worker group
DEFAULT_PENDING_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 5.0


def split_run_dir(run_dir: str) -> tuple[str, str]:
    """RUN_DIR -> (storage_path, name) for RunConfig: its parent (absolute path or URL) and its base name."""
    if "://" in run_dir:
        parsed = urlparse(run_dir.rstrip("/"))
        parent, _, name = parsed.path.rpartition("/")
        return f"{parsed.scheme}://{parsed.netloc}{parent}", name
    path = os.path.abspath(os.path.expanduser(run_dir))
    return os.path.dirname(path), os.path.basename(path)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds (not a hang inside ray.init) when nothing listens at a Ray HOST:PORT address."""
    if address in ("auto", "local") or address.startswith("ray://"):
        target = address[len("ray://"):] if address.startswith("ray://") else None
    elif address.startswith(("http://", "https://")):
        raise UserError(f"--address {address}: that is a dashboard (Jobs API) URL; give the cluster's GCS address "
                        "HOST:6379 here, or submit the run with `gandist submit CONFIG --ray-address URL`")
    else:
        target = address
    if not target:
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"--address {address}: no Ray cluster reachable there ({err}); start one with "
                        f"`ray start --head --port {port}` or fix the address") from None


def parse_workers(text: str | int | tuple) -> tuple[int, int]:
    """`--workers N` -> (N, N); `--workers MIN:MAX` -> (MIN, MAX), an elastic group Ray resizes between them."""
    if isinstance(text, tuple):
        return text
    lo, sep, hi = str(text).partition(":")
    try:
        low, high = int(lo), int(hi if sep else lo)
    except ValueError:
        raise UserError(f"--workers {text}: expected a count N or an elastic range MIN:MAX (e.g. 1:4)") from None
    if low < 1 or high < low:
        raise UserError(f"--workers must be at least 1 (and MIN <= MAX in a range MIN:MAX), got {text}")
    return low, high


def workers_text(workers: tuple[int, int]) -> str:
    """(N, N) -> 'N', (MIN, MAX) -> 'MIN:MAX': the form --workers takes."""
    return str(workers[0]) if workers[0] == workers[1] else f"{workers[0]}:{workers[1]}"


def check_worker_request(cfg: ExperimentConfig, workers, gpus_per_worker: float) -> None:
    """Refuse worker requests gandist cannot use well, before anything starts."""
    low, workers = parse_workers(workers)
    if not 0 <= gpus_per_worker <= 1:
        # the loop drives one GPU per process (cuda:LOCAL_RANK); a second GPU per worker would sit idle
        raise UserError(f"--gpus-per-worker {gpus_per_worker}: gandist runs one process per GPU; for "
                        f"{workers} x {gpus_per_worker:g} GPUs give --workers {int(workers * gpus_per_worker)} "
                        "--gpus-per-worker 1 (fractions below 1 share a GPU)")
    if workers > 1 and cfg.distributed.strategy == "single":
        raise UserError(f"--workers {workers_text((low, workers))} with distributed.strategy=single would train {workers} unsynced "
                        "copies; set --set distributed.strategy=ddp (or zero1/zero2/zero3)")


class RayReporter:
    """The loop's reporter inside a Ray Train worker: every rank reports each checkpoint, rank 0 attaches it."""

    def __init__(self, experiment_dir: str):
        self.experiment_dir = experiment_dir.rstrip("/")

    def on_step(self, step: int, metrics: dict) -> None:
        """Per-step metrics stay in gandist's telemetry; reporting them to Ray too would add a barrier per step."""

    def on_checkpoint(self, step: int, url: str) -> None:
        """Call ray.train.report once per checkpoint on every rank (it is a barrier); rank 0 passes a pointer.

        Ray gets a small pointer folder (`RUN_DIR/ray-step-N/gandist_checkpoint.json`), never gandist's own
        checkpoint folder: gandist's retention deletes old step folders, and Ray refuses to resume a run whose
        snapshot names a folder that no longer exists. gandist resumes from its own `latest` pointer anyway.
        """
        import ray.train

        metrics = {"step": step, "checkpoint_url": url}
        dir_name = f"ray-step-{step:08d}"
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=dir_name,
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode.SYNC)
            return
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "gandist_checkpoint.json"), "w") as f:
                json.dump({"step": step, "url": url}, f)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=dir_name)


def rank_environment(context) -> dict[str, str]:
    """The torchrun-style rank variables of one Ray Train worker, from its TrainContext.

    Workers of one group can span nodes: the world rank orders them over the whole group, the local rank and local
    world size count them on their own node (it picks the GPU), the node rank numbers the nodes.
    """
    return {"RANK": str(context.get_world_rank()), "WORLD_SIZE": str(context.get_world_size()),
            "LOCAL_RANK": str(context.get_local_rank()), "LOCAL_WORLD_SIZE": str(context.get_local_world_size()),
            "NODE_RANK": str(context.get_node_rank())}


def _train_worker(config: dict) -> None:
    """Runs on every Ray Train worker: the ordinary gandist loop on Ray's process group."""
    import ray.train

    # Ray Train V2 exports these itself; setting them from the context keeps them right whatever Ray version
    os.environ.update(rank_environment(ray.train.get_context()))
    from gandist.config import config_from_dict
    from gandist.train import preempt
    from gandist.train.loop import run_training

    cfg = config_from_dict(config["cfg"], "ray train config")
    # --force (accept a changed config in an existing run dir) applies to the first attempt; after a restart Ray
    # hands back the last reported checkpoint, the run dir already holds this config, and the loop resumes it
    force = config["force"] and ray.train.get_checkpoint() is None
    # The lease owner is the Ray run itself (its experiment dir), not this process: Ray's restart of a failed
    # worker group and a re-run of a dead driver are the same run and take its lease over at once, while a plain
    # `gandist train` (or a Ray run of another experiment dir) on this run dir stays refused by a live lease.
    with preempt.launcher_hooks(install_on_actor_main_thread, ray_preemption_notice):
        run_training(cfg, config["run_dir"], force=force, reporter=RayReporter(config["experiment_dir"]),
                     takeover=config.get("takeover", False), lease_owner=ray_lease_owner(config["experiment_dir"]))


# Ray Train V2 runs the loop in a thread of its worker actor; Python runs signal handlers in the main thread only,
# where Ray's own handler (sys.exit) would kill the worker without a checkpoint. The actor is a plain (one-thread)
# actor, so its `execute(fn)` method runs fn on the main thread, which run_train_fn left free: that swaps the
# handlers. The two functions below travel by reference (module-level), the handler through this slot.
_SIGTERM_SLOT: dict = {}


def _swap_sigterm_handler() -> None:
    """On the actor's main thread: install the slot's handler (keeping Ray's), or put Ray's back."""
    if "install" in _SIGTERM_SLOT:
        _SIGTERM_SLOT["previous"] = signal.signal(signal.SIGTERM, _SIGTERM_SLOT.pop("install"))
    elif "previous" in _SIGTERM_SLOT:
        signal.signal(signal.SIGTERM, _SIGTERM_SLOT.pop("previous"))


def install_on_actor_main_thread(handler):
    """preempt.Installer for a Ray Train worker: the SIGTERM handler on the actor's main thread; returns the undo."""
    import ray

    try:
        actor = ray.get_runtime_context().current_actor
        _SIGTERM_SLOT["install"] = handler
        ray.get(actor.execute.remote(_swap_sigterm_handler), timeout=CONNECT_TIMEOUT_S * 6)
    except Exception as err:  # not a RayTrainWorker actor with `execute` (another Ray version): train on without
        _SIGTERM_SLOT.pop("install", None)
        print(f"gandist: SIGTERM will stop this Ray worker without a checkpoint (handler not installed: {err}); a "
              "restart resumes from the last periodic checkpoint", file=sys.stderr)
        return lambda: None

    def undo() -> None:
        try:
            ray.get(actor.execute.remote(_swap_sigterm_handler), timeout=CONNECT_TIMEOUT_S * 6)
        except Exception as err:  # the group is being torn down: the actor and its handler go with it
            print(f"gandist: could not restore Ray's SIGTERM handler: {err}", file=sys.stderr)

    return undo


def ray_preemption_notice() -> str | None:
    """Ray Train's notice that a node of this group is draining (a spot reclaim, `ray drain-node`), or None.

    Its PreemptionWatcher sends it to every worker (RayTrainWorker.mark_preempt); this reads the worker's copy, a
    local attribute read. The public ray.train.get_preemption_info() returns the same but broadcasts it from rank 0
    through an actor at each call: a barrier per step that the loop's own agreement makes unnecessary.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        info = get_train_context().preemption_context.preemption_info
    except (ImportError, AttributeError, RuntimeError):  # another Ray version: SIGTERM still works
        return None
    if info is None:
        return None
    return f"Ray Train preemption notice (draining node(s) {', '.join(info.preempted_node_ids)}, ranks " \
           f"{info.preempted_ranks}, deadline_ms {info.deadline_ms})"


def ray_lease_owner(experiment_dir: str) -> str:
    """The run dir lease's owner id shared by every driver and worker group of one Ray run."""
    return f"ray:{experiment_dir.rstrip('/')}"


def ray_storage(storage_path: str):
    """(storage_filesystem, storage_path) for Ray's RunConfig: a URL run dir's parent goes through gandist's own
    fsspec filesystem (the same credentials, endpoint and caching rules as its checkpoints), wrapped for pyarrow;
    a local parent is Ray's default."""
    from gandist.remote_run_dir import is_remote

    if not is_remote(storage_path):
        return None, storage_path
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, root = fsspec.core.url_to_fs(storage_path)
    return PyFileSystem(FSSpecHandler(fs)), root


def wait_for_placement(workers: int, resources: dict, timeout_s: float) -> None:
    """Reserve the worker group's resources once; if Ray keeps it pending past the timeout, say why and stop."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    pg = placement_group([dict(resources) for _ in range(workers)], strategy="PACK")
    try:
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            state = placement_group_table(pg).get("state", "PENDING")
            available = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            raise UserError(
                f"Ray cannot place {workers} worker(s) with {resources} each: the placement group is still {state} "
                f"after {timeout_s:.0f}s (cluster total {total}, available {available}); lower --workers or "
                f"--gpus-per-worker, add nodes, or raise {PENDING_TIMEOUT_ENV}")
    finally:
        remove_placement_group(pg)


def train_with_ray(cfg: ExperimentConfig, run_dir: str, *, address: str | None, workers,
                   gpus_per_worker: float, force: bool, pending_timeout_s: float | None = None,
                   takeover: bool = False) -> int:
    """Train `cfg` with `workers` Ray Train workers (N or (MIN, MAX)); returns the exit code (0: finished).

    An elastic range becomes Ray Train V2's elastic group: Ray starts it as large as the cluster allows, restarts
    it smaller when a node dies and larger when nodes return (checked every GANDIST_RAY_RESIZE_INTERVAL seconds);
    each restart resumes gandist's newest checkpoint at the new world size (world-size invariant training).
    """
    low, high = parse_workers(workers)
    check_worker_request(cfg, (low, high), gpus_per_worker)
    if address:
        check_reachable(address)
    if pending_timeout_s is None:
        pending_timeout_s = float(os.environ.get(PENDING_TIMEOUT_ENV, DEFAULT_PENDING_TIMEOUT_S))

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    backend = cfg.distributed.backend if cfg.distributed.backend != "auto" else ("nccl" if use_gpu else "gloo")
    resources = {"CPU": 1.0, **({"GPU": float(gpus_per_worker)} if use_gpu else {})}
    storage_path, name = split_run_dir(run_dir)
    experiment_dir = f"{storage_path}/{name}"
    storage_filesystem, ray_storage_path = ray_storage(storage_path)
    env_vars = {} if use_gpu else {"DS_ACCELERATOR": "cpu"}  # DeepSpeed picks CUDA otherwise
    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None)
    wait_for_placement(low, resources, pending_timeout_s)  # an elastic group starts once MIN workers fit
    elastic = {} if low == high else {
        "elastic_resize_monitor_interval_s": float(os.environ.get(RESIZE_INTERVAL_ENV, DEFAULT_RESIZE_INTERVAL_S))}

    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_dir": experiment_dir, "force": force,
                           "experiment_dir": experiment_dir, "takeover": takeover},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=low if low == high else (low, high), use_gpu=use_gpu,
                                     resources_per_worker=resources, **elastic),
        run_config=RunConfig(
            name=name, storage_path=ray_storage_path, storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.distributed.max_failures),
            # gandist prunes its own checkpoints (checkpoint.keep_last); Ray must not delete them behind its back
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            worker_runtime_env={"env_vars": env_vars} if env_vars else None,
        ),
    )
    started = time.time()
    try:
        result = trainer.fit()
    except Exception as err:  # TrainingFailedError and friends: the workers' traceback is already in the log
        print(f"gandist: Ray Train run {experiment_dir} failed after {time.time() - started:.0f}s: {err}",
              file=sys.stderr)
        return 1
    if result.error is not None:
        print(f"gandist: Ray Train run {experiment_dir} failed: {result.error}", file=sys.stderr)
        return 1
    step = (result.metrics or {}).get("step")
    print(f"gandist: Ray Train run finished in {time.time() - started:.0f}s; last checkpoint step {step}, "
          f"run dir {experiment_dir}")
    return 0
