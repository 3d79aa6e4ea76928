"""`gandist submit` (Ray Jobs or a KubeRay RayJob) and `gandist jobs status|logs|stop`; heavy imports in handlers."""
from __future__ import annotations

import argparse
import json
import sys


def add_cli(subparsers) -> None:
    """Register `submit` and `jobs` on the top-level parser."""
    p = subparsers.add_parser(
        "submit", help="Submit an experiment to a Ray cluster (Ray Jobs) or render a KubeRay RayJob.",
        description="Validate CONFIG, then either submit it to a running Ray cluster (--ray-address) or write a "
                    "KubeRay RayJob + ConfigMap (--kuberay) for `kubectl apply -f`.")
    p.add_argument("config", help="Experiment YAML (validated here, before anything is submitted).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a config key, e.g. --set train.steps=20 (repeatable).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--ray-address", metavar="URL", help="Ray dashboard URL, e.g. http://127.0.0.1:8265.")
    where.add_argument("--kuberay", action="store_true", help="Render a KubeRay RayJob instead of submitting.")
    p.add_argument("--workers", default="1", help="Ray Train workers (one per GPU pod with --kuberay): N, or "
                                                 "MIN:MAX for an elastic group (KubeRay: an autoscaling worker group).")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default: 0 for Ray Jobs, 1 for --kuberay).")
    p.add_argument("--run-dir", default=None,
                   help="Run dir on the cluster (shared path or s3:// URL; default ~/gandist-runs/NAME on the "
                        "head node for Ray Jobs, /workspace/runs/NAME for KubeRay).")
    p.add_argument("--force", action="store_true", help="Continue a run dir whose config differs (as train --force).")
    jobs = p.add_argument_group("Ray Jobs")
    jobs.add_argument("--follow", action="store_true", help="Stream the job's logs until it ends; exit 0 only "
                                                             "when it SUCCEEDED.")
    jobs.add_argument("--timeout", type=float, default=None, help="With --follow: give up after this many seconds.")
    jobs.add_argument("--working-dir", default=None,
                      help="Folder uploaded as the job's working_dir (default: this gandist checkout).")
    jobs.add_argument("--pip", action="append", default=None, metavar="SPEC",
                      help="Install gandist on the cluster from a pip spec instead of uploading the checkout "
                           "(e.g. gandist==0.1.0 or a wheel URL; repeatable).")
    jobs.add_argument("--no-upload", action="store_true",
                      help="Upload no code: the cluster's image already has gandist installed.")
    kube = p.add_argument_group("KubeRay")
    kube.add_argument("--image", default=None, help="Container image with CUDA torch, deepspeed and gandist.")
    kube.add_argument("--namespace", default=None, help="Namespace of the RayJob and its ConfigMap.")
    kube.add_argument("--name", default=None, help="RayJob name (default: gandist-CONFIG_NAME).")
    kube.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                      help="Node selector of the worker pods (repeatable; default for GPUs nvidia.com/gpu.present).")
    kube.add_argument("--s3-secret", default="gandist-s3", help="Secret whose keys become the pods' env (envFrom).")
    kube.add_argument("--pvc", default=None, help="ReadWriteMany PersistentVolumeClaim mounted at /workspace.")
    kube.add_argument("--ttl", type=int, default=3600, help="ttlSecondsAfterFinished of the RayJob.")
    kube.add_argument("--out", default=None, help="Write the YAML here instead of stdout.")
    p.set_defaults(func=_submit)

    j = subparsers.add_parser("jobs", help="Status, logs or stop of a submitted Ray job.")
    j.add_argument("action", choices=("status", "logs", "stop"))
    j.add_argument("job_id", help="The id `gandist submit` printed (raysubmit_...).")
    j.add_argument("--ray-address", required=True, metavar="URL", help="Ray dashboard URL.")
    j.set_defaults(func=_jobs)


def _submit(args: argparse.Namespace) -> int:
    from gandist.errors import UserError
    from gandist.config import load_config

    cfg = load_config(args.config, args.overrides)  # a config that fails validation never leaves this machine
    if args.kuberay:
        return _render_kuberay(cfg, args)
    from gandist.orchestrate import jobs

    if args.no_upload and (args.pip or args.working_dir):
        raise UserError("--no-upload contradicts --pip/--working-dir; give one way to ship the code")
    working_dir = None
    if not args.no_upload and not args.pip:
        working_dir = args.working_dir or jobs.project_root()
        if working_dir is None:
            raise UserError("gandist is not running from a source checkout; give --working-dir DIR, --pip SPEC "
                            "or --no-upload (the cluster image has gandist)")
    run_dir = args.run_dir or f"~/gandist-runs/{cfg.name}"
    job_id = jobs.submit(cfg, args.ray_address, run_dir=run_dir, workers=args.workers,
                         gpus_per_worker=args.gpus_per_worker or 0.0,
                         working_dir=str(working_dir) if working_dir else None,
                         pip=args.pip, force=args.force)
    print(f"submitted {job_id} (run dir {run_dir}); follow with: gandist jobs logs {job_id} "
          f"--ray-address {args.ray_address}", flush=True)
    if not args.follow:
        return 0
    final = jobs.follow(args.ray_address, job_id, timeout_s=args.timeout)
    print(f"job {job_id}: {final}")
    return 0 if final == "SUCCEEDED" else 1


def _render_kuberay(cfg, args: argparse.Namespace) -> int:
    from pathlib import Path

    from gandist.errors import UserError
    from gandist.orchestrate.kuberay import KubeRayOptions, render_rayjob, to_yaml
    from gandist.orchestrate.ray_train import parse_workers

    gpus = 1.0 if args.gpus_per_worker is None else args.gpus_per_worker
    if gpus != int(gpus):
        raise UserError(f"--gpus-per-worker {gpus}: Kubernetes schedules whole GPUs per pod; give an integer")
    selector = {}
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--node-selector {item!r}: expected KEY=VALUE, e.g. nvidia.com/gpu.product=H100")
        selector[key] = value
    low, high = parse_workers(args.workers)
    opts = KubeRayOptions(workers=high, min_workers=low if low < high else None, gpus_per_worker=int(gpus),
                          namespace=args.namespace, name=args.name, run_dir=args.run_dir, s3_secret=args.s3_secret, pvc=args.pvc,
                          node_selector=selector, ttl_seconds_after_finished=args.ttl)
    if args.image:
        opts.image = args.image
    try:
        text = to_yaml(render_rayjob(cfg, opts))
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: kubectl apply -f {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from gandist.orchestrate import jobs

    if args.action == "status":
        info = jobs.status(args.ray_address, args.job_id)
        print(json.dumps(info, indent=2, default=str))
        return 0
    if args.action == "logs":
        sys.stdout.write(jobs.logs(args.ray_address, args.job_id))
        return 0
    stopped = jobs.stop(args.ray_address, args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'was not running'}")
    return 0
