"""Offline Kubernetes checks for tests: KubeRay CRD schemas, Kubernetes' own schemas, and `kubectl kustomize`.

The CRD YAML lives outside the repo (../shared/schemas/kuberay, see its SOURCE.md); tests skip when it is absent.
k8s/ is rendered by kubectl's built-in kustomize, the one `kubectl apply -k` runs for users (.ci/run installs
kubectl); tests that render skip with `kubectl_missing()` as their reason where it is absent or too old.
"""
from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO.parent / "shared" / "schemas" / "kuberay"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
K8S_VERSION = kubernetes_validate.latest_version()
KUSTOMIZE_MAJOR = 5  # k8s/ uses `patches:` with inline JSON6902 ops; kubectl 1.20's kustomize v2 cannot read them


def _strict(schema):
    """Reject unknown fields like the API server's strict field validation does (CRDs only prune them)."""
    if isinstance(schema, dict):
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str):
    """A jsonschema validator for the openAPIV3Schema of the v1 version of a KubeRay CRD, made strict."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 25k-line CRD in ~1 s, not ~13 s
    crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def pod_templates(doc: dict) -> list[dict]:
    """Every pod template inside a RayJob or RayCluster."""
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]


def validate(doc: dict) -> None:
    """Raise if a manifest breaks its schema: KubeRay's CRD for ray.io kinds, Kubernetes' own for core kinds."""
    kind = doc.get("kind")
    if kind in CRD_FILES:
        error = jsonschema.exceptions.best_match(crd_validator(kind).iter_errors(doc))
        if error is not None:
            raise error
        # the CRD embeds PodTemplateSpec; Kubernetes' own schema checks the pod templates once more
        for template in pod_templates(doc):
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                          "template": template}, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def has_schema(doc: dict) -> bool:
    """True for kinds with a schema here (KubeRay CRDs and built-in kinds; not other operators' CRDs)."""
    if doc.get("kind") in CRD_FILES:
        return True
    return "." not in doc.get("apiVersion", "").split("/")[0] or doc["apiVersion"].split("/")[0].endswith("k8s.io")


# -- rendering with kubectl's kustomize --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def kubectl_missing() -> str | None:
    """Why `kubectl kustomize` cannot render k8s/ here (the skip reason), or None when it can."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl (with its built-in kustomize) is not installed; .ci/run installs it (apt-get install kubectl)"
    # --client asks no server; kustomizeVersion is e.g. "v5.5.0"
    out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "") if out.returncode == 0 else ""
    major = version.lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < KUSTOMIZE_MAJOR:
        return (f"{kubectl} has kustomize {version or 'of unknown version'}; k8s/ needs kustomize "
                f"v{KUSTOMIZE_MAJOR} (kubectl 1.27 or newer)")
    return None


def kustomize(folder: Path) -> list[dict]:
    """Render a kustomization folder with `kubectl kustomize` to its list of manifests."""
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed (exit {out.returncode}): {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]
