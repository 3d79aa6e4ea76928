"""launch/: the Ray cluster launcher YAML validates against Ray's own cluster schema; the image recipe and the
entry script say what the README promises."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import ray
import yaml

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def test_cluster_launcher_yaml_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((LAUNCH / "cluster-aws.yaml").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["provider"]["type"] == "aws"
    gpu = cluster["available_node_types"]["gpu_8x"]
    assert gpu["node_config"]["InstanceType"].startswith("p4d") and gpu["max_workers"] >= 1
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"] == {"CPU": 0}


def test_misspelt_launcher_key_is_caught_by_the_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((LAUNCH / "cluster-aws.yaml").read_text())
    cluster["head_node_typ"] = cluster.pop("head_node_type")
    try:
        jsonschema.validate(cluster, schema)
    except jsonschema.ValidationError as err:
        assert "head_node_typ" in str(err)
    else:
        raise AssertionError("a misspelt key passed Ray's cluster schema")


def test_dockerfile_pins_torch_and_runs_as_uid_1000():
    text = (LAUNCH / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text and '"torch==${TORCH_VERSION}"' in text
    assert "deepspeed" in text.lower() and "USER 1000" in text
    for path in ("launch/entrypoint.sh", "pyproject.toml", "gandist", "configs"):
        assert (LAUNCH.parent / path.split()[0]).exists(), path


def test_entry_script_needs_config_and_run_dir():
    proc = subprocess.run(["bash", str(LAUNCH / "entrypoint.sh")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage: gandist-entrypoint CONFIG RUN_DIR" in proc.stderr
