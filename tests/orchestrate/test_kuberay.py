"""KubeRay manifests: every file in k8s/, both overlays and every rendered RayJob validate offline against
KubeRay's CRD schema and Kubernetes' own schemas, and carry what a cluster run needs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from gandist.config import ExperimentConfig, load_config
from gandist.orchestrate.kuberay import KubeRayOptions, render_raycluster, render_rayjob, to_yaml

from .conftest import gandist
from .k8s_tools import CRD_DIR, REPO, has_schema, kubectl_missing, kustomize, pod_templates, validate

K8S = REPO / "k8s"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
needs_crds = pytest.mark.skipif(not (CRD_DIR / "ray.io_rayjobs.yaml").is_file(),
                                reason=f"KubeRay CRD schemas not found at {CRD_DIR} (see the project's shared/ data)")
needs_kubectl = pytest.mark.skipif(kubectl_missing() is not None, reason=kubectl_missing() or "")
RENDERED = [K8S / "base", *OVERLAYS]  # what `kubectl apply -k` is pointed at


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p.name != "config.yaml")


def test_overlays_exist_for_cpu_dev_and_gpu_8x():
    assert [p.name for p in OVERLAYS] == ["cpu-dev", "gpu-8x"]


@needs_crds
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_in_k8s_validates(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        if has_schema(doc):
            validate(doc)


@pytest.mark.parametrize("path", sorted(K8S.rglob("config.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_experiment_configs_in_k8s_load(path):
    cfg = load_config(path)
    assert cfg.telemetry.port == 9100  # the port the pod templates expose as gandist-m0


def _pod_references(doc: dict) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap and PersistentVolumeClaim the pod templates of a RayJob/RayCluster mount."""
    refs = set()
    for template in pod_templates(doc):
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                refs.add(("ConfigMap", volume["configMap"]["name"]))
            if "persistentVolumeClaim" in volume:
                refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
    return refs


@needs_crds
@needs_kubectl
@pytest.mark.parametrize("folder", RENDERED, ids=lambda p: str(p.relative_to(K8S)))
def test_kubectl_kustomize_renders_a_valid_and_consistent_stack(folder):
    docs = kustomize(folder)
    kinds = sorted(d["kind"] for d in docs)
    assert {"RayJob", "RayCluster", "ConfigMap", "PersistentVolumeClaim", "PodMonitor"} <= set(kinds)
    for doc in docs:
        if has_schema(doc):
            validate(doc)
    ns = yaml.safe_load((folder / "kustomization.yaml").read_text()).get("namespace")
    assert {d["metadata"].get("namespace") for d in docs} == {ns}
    # kustomize does not rewrite names inside CRDs: what the pods mount must exist under exactly that name
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        if doc["kind"] in ("RayJob", "RayCluster"):
            missing = sorted(_pod_references(doc) - rendered)
            assert not missing, f"{doc['kind']} {doc['metadata']['name']} mounts {missing}, which {folder} lacks"
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "gandist-config")
    cfg = ExperimentConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert cfg.model_dump() == load_config(folder / "config.yaml").model_dump()
    rayjob = next(d for d in docs if d["kind"] == "RayJob")
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus_in_pods = int(limits.get("nvidia.com/gpu", 0)) * workers["replicas"]
    entry = rayjob["spec"]["entrypoint"].split()
    ray_workers = int(entry[entry.index("--workers") + 1])
    gpus_per_worker = float(entry[entry.index("--gpus-per-worker") + 1])
    assert ray_workers * gpus_per_worker == gpus_in_pods  # the job asks for exactly the GPUs the pods hold
    if folder.name == "gpu-8x":
        assert gpus_in_pods == 8 and cfg.distributed.strategy == "zero2"
        ports = [p["name"] for p in workers["template"]["spec"]["containers"][0]["ports"]]
        assert [f"gandist-m{i}" for i in range(8)] == [p for p in ports if p.startswith("gandist-m")]
    elif folder.name == "cpu-dev":
        assert gpus_in_pods == 0 and "nodeSelector" not in workers["template"]["spec"]
    else:
        assert gpus_in_pods == 2 and ns is None  # the base: 2 GPU pods, namespace left to the overlays


@needs_kubectl
def test_kubectl_kustomize_failure_names_the_folder_and_the_cause(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n- missing.yaml\n")
    with pytest.raises(RuntimeError, match=f"kubectl kustomize {tmp_path} failed .*missing.yaml"):
        kustomize(tmp_path)


def test_base_manifests_match_the_renderer():
    sys.path.insert(0, str(REPO / "launch"))
    try:
        from render_k8s_base import render_base
    finally:
        sys.path.pop(0)
    for name, text in render_base().items():
        assert (K8S / "base" / name).read_text() == text, f"k8s/base/{name} is stale: run python launch/render_k8s_base.py"


def _options(**kw) -> KubeRayOptions:
    return KubeRayOptions(**kw)


@needs_crds
@pytest.mark.parametrize("workers,gpus", [(1, 0), (2, 1), (4, 8)])
def test_rendered_rayjob_validates_and_asks_for_the_gpus(workers, gpus):
    cfg = load_config(None, ["name=BigGAN 128!", "distributed.strategy=ddp"])
    config_map, rayjob = render_rayjob(cfg, _options(workers=workers, gpus_per_worker=gpus, namespace="ml",
                                                     node_selector={"pool": "a100"} if gpus else {}))
    validate(config_map)
    validate(rayjob)
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["metadata"]["name"] == "gandist-biggan-128"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 3600
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == workers
    pod = group["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["requests"] == res["limits"]
    assert res["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    if gpus:
        assert pod["nodeSelector"] == {"pool": "a100"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        assert "tolerations" not in pod
    # one Ray Train worker (process) per GPU
    assert (f"--workers {workers * gpus} --gpus-per-worker 1" if gpus else f"--workers {workers} --gpus-per-worker 0") \
        in spec["entrypoint"]
    ports = [p["containerPort"] for p in pod["containers"][0]["ports"] if p["name"].startswith("gandist-m")]
    assert ports == [9100 + i for i in range(max(1, gpus))]
    assert group["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9100"
    assert yaml.safe_load(config_map["data"]["config.yaml"])["telemetry"]["port"] == 9100


def test_rendered_pods_run_as_non_root_with_credentials_only_from_a_secret():
    cfg = load_config(None, ["checkpoint.url=s3://bucket/ckpt", "distributed.strategy=ddp"])
    _, rayjob = render_rayjob(cfg, _options(workers=2, s3_secret="my-s3"))
    for template in pod_templates(rayjob):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
        container = spec["containers"][0]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        # the config uses s3://, so a missing Secret must stop the pod instead of running without credentials
        assert container["envFrom"] == [{"secretRef": {"name": "my-s3", "optional": False}}]
        assert not [e for e in container["env"] if "AWS" in e["name"] or "SECRET" in e["name"]]
    assert "AWS_" not in to_yaml([rayjob])


@needs_crds
@pytest.mark.parametrize("gpus", [0, 2])
def test_elastic_rayjob_autoscales_between_min_and_max_pods_and_trains_elastic(gpus):
    cfg = load_config(None, ["distributed.strategy=zero2"])
    _, rayjob = render_rayjob(cfg, _options(workers=4, min_workers=1, gpus_per_worker=gpus))
    validate(rayjob)
    spec = rayjob["spec"]
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (1, 4, 4)
    # Ray Train's elastic group spans exactly the processes the pods can hold: one per GPU
    expected = f"--workers {gpus}:{4 * gpus} --gpus-per-worker 1" if gpus else "--workers 1:4 --gpus-per-worker 0"
    assert expected in spec["entrypoint"]


def test_submit_kuberay_cli_renders_an_elastic_worker_range(capsys):
    from gandist.cli import main

    assert main(["submit", "configs/toy_ring8_tiny.yaml", "--set", "distributed.strategy=ddp", "--kuberay",
                 "--workers", "2:3", "--gpus-per-worker", "1"]) == 0
    rayjob = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d and d["kind"] == "RayJob"][0]
    group = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (2, 3)
    assert "--workers 2:3 " in rayjob["spec"]["entrypoint"]


@needs_crds
def test_rendered_raycluster_validates_and_autoscales_from_zero():
    cluster = render_raycluster(load_config(None, ["distributed.strategy=ddp"]), _options(workers=3))
    validate(cluster)
    group = cluster["spec"]["workerGroupSpecs"][0]
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 3)


@needs_crds
def test_schema_check_catches_a_misspelt_field():
    _, rayjob = render_rayjob(ExperimentConfig(), _options())
    rayjob["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(Exception, match="shutdownAfterJobFinish"):
        validate(rayjob)
    _, rayjob = render_rayjob(ExperimentConfig(), _options())
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = 1
    with pytest.raises(Exception, match="imagePullPolicyy"):
        validate(rayjob)


@needs_crds
def test_submit_kuberay_cli_writes_a_valid_rayjob(tmp_path, capsys):
    from gandist.cli import main

    out = tmp_path / "job.yaml"
    rc = main(["submit", "configs/demo_digits.yaml", "--set", "train.steps=300", "--set", "distributed.strategy=ddp",
               "--kuberay", "--workers", "2",
               "--gpus-per-worker", "4", "--image", "registry.example/gandist:1", "--node-selector", "pool=h100",
               "--namespace", "ml", "--out", str(out)])
    assert rc == 0
    config_map, rayjob = list(yaml.safe_load_all(out.read_text()))
    validate(config_map)
    validate(rayjob)
    assert yaml.safe_load(config_map["data"]["config.yaml"])["train"]["steps"] == 300
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["image"] == "registry.example/gandist:1"
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert worker["nodeSelector"] == {"pool": "h100"} and rayjob["metadata"]["namespace"] == "ml"
    assert "--workers 8 --gpus-per-worker 1" in rayjob["spec"]["entrypoint"]  # 2 pods x 4 GPUs


@needs_crds
def test_submit_kuberay_without_out_writes_only_the_manifests_to_stdout():
    # what `gandist submit --kuberay ... | kubectl apply -f -` feeds kubectl: the real console script, its stdout alone
    proc = gandist("submit", str(REPO / "configs" / "demo_digits.yaml"), "--kuberay", "--set",
                   "distributed.strategy=ddp", "--workers", "2", "--gpus-per-worker", "0", timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    for doc in docs:
        validate(doc)
    assert "--workers 2 --gpus-per-worker 0" in docs[1]["spec"]["entrypoint"]


@pytest.mark.parametrize("args,message", [
    (["--set", "train.stepz=3"], "train.stepz: unknown key (did you mean steps?)"),
    (["--gpus-per-worker", "0.5"], "Kubernetes schedules whole GPUs"),
    (["--node-selector", "pool"], "expected KEY=VALUE"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2"], "distributed.strategy=single would train unsynced copies"),
])
def test_submit_kuberay_refuses_bad_input_with_one_line(args, message, tmp_path, capsys):
    from gandist.cli import main

    out = tmp_path / "job.yaml"
    assert main(["submit", "configs/demo_digits.yaml", "--kuberay", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_rendered_config_binds_the_metrics_endpoint_on_all_pod_interfaces():
    import yaml

    from gandist.config import load_config
    from gandist.orchestrate.kuberay import KubeRayOptions, render_rayjob

    docs = render_rayjob(load_config("configs/demo_digits.yaml"), KubeRayOptions())
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    telemetry = yaml.safe_load(config_map["data"]["config.yaml"])["telemetry"]
    assert telemetry["host"] == "0.0.0.0" and telemetry["port"] > 0
