"""Render a KubeRay `RayJob` (apiVersion ray.io/v1) plus the ConfigMap that carries the experiment config.

The RayJob starts a Ray cluster (one head, `workers` GPU pods), runs `gandist train --ray` on it through the Ray Job
API, and deletes the cluster when the job ends. Nothing here talks to a Kubernetes API server: the output is YAML
for `kubectl apply -f`, validated offline in tests against KubeRay's CRD schema and Kubernetes' own schemas.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from gandist.config import ExperimentConfig

RAY_VERSION = "2.60.0"  # the Ray the image installs; KubeRay uses it to pick defaults for the cluster
CONFIG_MOUNT = "/etc/gandist"  # where the ConfigMap's config.yaml appears inside every pod
RAY_METRICS_PORT = 8080  # Ray's own Prometheus endpoint (--metrics-export-port)
GANDIST_METRICS_PORT = 9100  # gandist's exporter (telemetry.port) when the config leaves it off
NON_ROOT_UID = 1000  # the `ray` user of rayproject images and of launch/Dockerfile


@dataclass
class KubeRayOptions:
    """What the cluster looks like: image, worker pods, resources, scheduling and storage."""

    image: str = "ghcr.io/gandist/gandist:0.1.0-cuda12.4"
    workers: int = 1  # worker pods; with min_workers, the most pods the autoscaler may run
    min_workers: int | None = None  # set: an elastic job (autoscaling worker group, Ray Train resizes with it)
    gpus_per_worker: int = 1
    cpus_per_worker: int | None = None  # None: 8 per GPU (data loading), 2 for CPU-only pods
    memory_per_worker: str | None = None  # None: 32Gi per GPU, 8Gi for CPU-only pods
    namespace: str | None = None
    name: str | None = None  # None: derived from the config's name
    run_dir: str | None = None  # None: /workspace/runs/NAME on the shared volume
    s3_secret: str = "gandist-s3"  # Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL...
    pvc: str | None = None  # ReadWriteMany claim mounted at /workspace on every pod (None: emptyDir)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    ttl_seconds_after_finished: int = 3600
    active_deadline_seconds: int | None = None


def k8s_name(text: str, max_len: int = 40) -> str:
    """A DNS-1123 label from free text ('BigGAN 128' -> 'biggan-128'); KubeRay appends suffixes, so keep it short."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (slug[:max_len].rstrip("-")) or "gandist"


def _uses_s3(cfg: ExperimentConfig, run_dir: str) -> bool:
    """Whether anything in the run reads or writes s3:// (then the credentials Secret must exist)."""
    return "s3://" in cfg.model_dump_json() or run_dir.startswith("s3://")


def _resources(opts: KubeRayOptions) -> dict:
    """Requests == limits for a worker pod: the scheduler reserves what training really uses (no CPU throttling)."""
    gpus = opts.gpus_per_worker
    cpus = opts.cpus_per_worker if opts.cpus_per_worker is not None else (8 * gpus if gpus else 2)
    memory = opts.memory_per_worker or (f"{32 * gpus}Gi" if gpus else "8Gi")
    amounts = {"cpu": str(cpus), "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container(name: str, image: str, resources: dict, ports: list[dict], secret: str, secret_optional: bool,
               shm: bool) -> dict:
    """One Ray container: config mounted read-only, S3 credentials from a Secret (never inline), no root."""
    mounts = [{"name": "gandist-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
              {"name": "workspace", "mountPath": "/workspace"}]
    if shm:  # NCCL and Ray's object store need a real /dev/shm, not the 64 MiB container default
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": ports,
        "resources": resources,
        "envFrom": [{"secretRef": {"name": secret, "optional": secret_optional}}],
        "env": [{"name": "GANDIST_CONFIG", "value": f"{CONFIG_MOUNT}/config.yaml"}],
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }


def _pod_spec(container: dict, config_map: str, opts: KubeRayOptions, gpu_pod: bool) -> dict:
    """Pod spec shared by head and workers; only GPU pods get the GPU node selector and tolerations."""
    workspace = ({"persistentVolumeClaim": {"claimName": opts.pvc}} if opts.pvc else {"emptyDir": {}})
    spec: dict = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID,
                            "fsGroup": NON_ROOT_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "gandist-config", "configMap": {"name": config_map}},
            {"name": "workspace", **workspace},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if gpu_pod:
        selector = opts.node_selector or {"nvidia.com/gpu.present": "true"}
        tolerations = opts.tolerations or [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        spec["nodeSelector"] = dict(selector)
        spec["tolerations"] = [dict(t) for t in tolerations]
    elif opts.node_selector:
        spec["nodeSelector"] = dict(opts.node_selector)
    return spec


def _metrics_annotations(port: int) -> dict:
    """Annotations for annotation-based scrapers (rank 0's exporter); the PodMonitor selects the named ports."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _prepare(cfg: ExperimentConfig, opts: KubeRayOptions) -> tuple[ExperimentConfig, str, str, dict]:
    """Check options; return (config with the exporter on, resource name, run dir, labels)."""
    if opts.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {opts.workers}")
    if opts.min_workers is not None and not 1 <= opts.min_workers <= opts.workers:
        raise ValueError(f"--workers {opts.min_workers}:{opts.workers}: need 1 <= MIN <= MAX")
    if opts.gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker must be >= 0, got {opts.gpus_per_worker}")
    if opts.workers * max(1, opts.gpus_per_worker) > 1 and cfg.distributed.strategy == "single":
        raise ValueError(f"{opts.workers} pod(s) x {opts.gpus_per_worker} GPU(s) with distributed.strategy=single "
                         "would train unsynced copies; add --set distributed.strategy=ddp (or zero1/zero2/zero3)")
    name = k8s_name(opts.name or (cfg.name if cfg.name.startswith("gandist") else f"gandist-{cfg.name}"))
    cfg = cfg.model_copy(deep=True)
    if cfg.telemetry.port == 0:  # a cluster run is scraped: switch the exporter on at a fixed, annotated port
        cfg.telemetry.port = GANDIST_METRICS_PORT
    if cfg.telemetry.host == "127.0.0.1":  # in a pod, Prometheus scrapes the pod IP, not loopback
        cfg.telemetry.host = "0.0.0.0"
    labels = {"app.kubernetes.io/name": "gandist", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/component": "training"}
    return cfg, name, opts.run_dir or f"/workspace/runs/{name}", labels


def cluster_spec(cfg: ExperimentConfig, opts: KubeRayOptions, name: str, run_dir: str, labels: dict,
                 autoscale: bool = False) -> dict:
    """The RayCluster spec: a CPU head (driver + Ray Train controller) and one group of worker pods."""
    config_map = f"{name}-config"
    secret_optional = not _uses_s3(cfg, run_dir)
    gpus = opts.gpus_per_worker
    elastic = opts.min_workers is not None
    # an elastic job keeps MIN pods and lets the autoscaler add up to MAX (and replace lost ones); a plain
    # RayCluster for interactive use autoscales from zero
    min_replicas = opts.min_workers if elastic else (0 if autoscale else opts.workers)
    ray_metrics = {"name": "metrics", "containerPort": RAY_METRICS_PORT}
    # one exporter per training process at telemetry.port + local rank, named as k8s/monitoring's PodMonitor expects
    rank_ports = [{"name": f"gandist-m{i}", "containerPort": cfg.telemetry.port + i} for i in range(max(1, gpus))]
    head_container = _container(
        "ray-head", opts.image, {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}},
        [{"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": 8265},
         {"name": "client", "containerPort": 10001}, ray_metrics],
        opts.s3_secret, secret_optional, shm=True)
    worker_container = _container("ray-worker", opts.image, _resources(opts), [ray_metrics, *rank_ports],
                                  opts.s3_secret, secret_optional, shm=True)
    head_meta = {"labels": dict(labels), "annotations": _metrics_annotations(RAY_METRICS_PORT)}
    pod_meta = {"labels": dict(labels), "annotations": _metrics_annotations(cfg.telemetry.port)}
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": autoscale or elastic,
        "headGroupSpec": {
            # the head runs the driver and Ray Train's controller, no training worker
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0",
                               "metrics-export-port": str(RAY_METRICS_PORT)},
            "template": {"metadata": head_meta, "spec": _pod_spec(head_container, config_map, opts, gpu_pod=False)},
        },
        "workerGroupSpecs": [{
            "groupName": "gpu-workers" if gpus else "cpu-workers",
            "replicas": opts.workers,
            "minReplicas": min_replicas,
            "maxReplicas": opts.workers,
            "rayStartParams": {"metrics-export-port": str(RAY_METRICS_PORT)},
            "template": {"metadata": pod_meta,
                         "spec": _pod_spec(worker_container, config_map, opts, gpu_pod=gpus > 0)},
        }],
    }


def _metadata(name: str, labels: dict, namespace: str | None) -> dict:
    meta = {"name": name, "labels": dict(labels)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def render_config_map(cfg: ExperimentConfig, opts: KubeRayOptions) -> dict:
    """The ConfigMap `NAME-config` holding the resolved config as config.yaml."""
    cfg, name, _, labels = _prepare(cfg, opts)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(f"{name}-config", labels, opts.namespace),
            "data": {"config.yaml": cfg.to_yaml()}}


def render_rayjob(cfg: ExperimentConfig, opts: KubeRayOptions) -> list[dict]:
    """[ConfigMap, RayJob] for one experiment; `kubectl apply -f` on their YAML starts it."""
    prepared, name, run_dir, labels = _prepare(cfg, opts)
    # gandist runs one process per GPU: N pods x G GPUs become N*G Ray Train workers with one GPU each
    gpus = opts.gpus_per_worker
    per_pod, per_worker = (gpus, 1) if gpus else (1, 0)
    ray_workers = str(opts.workers * per_pod)
    if opts.min_workers is not None and opts.min_workers < opts.workers:
        ray_workers = f"{opts.min_workers * per_pod}:{ray_workers}"  # Ray Train's elastic group follows the pods
    entrypoint = (f"gandist train {CONFIG_MOUNT}/config.yaml --ray --workers {ray_workers} "
                  f"--gpus-per-worker {per_worker} --run-dir {run_dir}")
    spec: dict = {
        "entrypoint": entrypoint,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": opts.ttl_seconds_after_finished,
        "backoffLimit": 0,  # Ray Train restarts failed workers itself (distributed.max_failures)
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": cluster_spec(prepared, opts, name, run_dir, labels),
    }
    if opts.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = opts.active_deadline_seconds
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _metadata(name, labels, opts.namespace),
              "spec": spec}
    return [render_config_map(cfg, opts), rayjob]


def render_raycluster(cfg: ExperimentConfig, opts: KubeRayOptions) -> dict:
    """A long-lived RayCluster for interactive use (`ray job submit`, notebooks); workers autoscale from 0."""
    prepared, name, run_dir, labels = _prepare(cfg, opts)
    labels = {**labels, "app.kubernetes.io/component": "interactive"}
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": _metadata(f"{name}-interactive", labels, opts.namespace),
            "spec": cluster_spec(prepared, opts, name, run_dir, labels, autoscale=True)}


class _PlainDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full: anchors and aliases (&id001) confuse people reading manifests."""

    def ignore_aliases(self, data) -> bool:
        return True


def to_yaml(docs: list[dict]) -> str:
    """Multi-document YAML, in order (the ConfigMap before the RayJob that mounts it)."""
    return yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False, width=120)
