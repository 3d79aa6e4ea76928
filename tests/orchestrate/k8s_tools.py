"""Offline Kubernetes checks for tests: KubeRay CRD schemas, Kubernetes' own schemas, and a small kustomize.

The CRD YAML lives outside the repo (../shared/schemas/kuberay, see its SOURCE.md); tests skip when it is absent.
The kustomize here covers what k8s/ uses (resources, configMapGenerator, namespace, JSON6902 patches) so the
overlays can be rendered where no kustomize/kubectl binary exists; when kubectl exists, a test compares the two.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO.parent / "shared" / "schemas" / "kuberay"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
K8S_VERSION = kubernetes_validate.latest_version()


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


# -- a small kustomize ------------------------------------------------------------------------------------------


def _pointer(path: str) -> list:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 add/replace/remove (what the overlays use)."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                node[index] = copy.deepcopy(op["value"])
            else:
                del node[index]
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace" and last not in node:
                raise KeyError(f"replace {op['path']}: no such key")
            node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[last]
        else:
            raise ValueError(f"unsupported JSON patch op {op['op']}")
    return doc


def kustomize(folder: Path) -> list[dict]:
    """Render a kustomization folder to its list of manifests."""
    folder = Path(folder)
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for res in k.get("resources", []):
        path = folder / res
        docs += kustomize(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        data = {}
        for entry in gen.get("files", []):
            key, _, file = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = (folder / file).read_text()
        existing = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == gen["name"]]
        if gen.get("behavior", "create") == "create":
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
        elif gen["behavior"] == "replace":
            existing[0]["data"] = data
        else:
            existing[0]["data"].update(data)
    for patch in k.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        for doc in docs:
            if doc["kind"] == target.get("kind") and doc["metadata"]["name"] == target.get("name", doc["metadata"]["name"]):
                json_patch(doc, ops)
    if "namespace" in k:
        for doc in docs:
            doc["metadata"]["namespace"] = k["namespace"]
    return docs
