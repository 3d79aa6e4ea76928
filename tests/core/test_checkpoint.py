import hashlib
import json
import os

import pytest
import torch

import gandist
from gandist.checkpoint import CheckpointStore
from gandist.config import load_config
from gandist.errors import CheckpointError
from gandist.train.loop import run_training

TINY = ["model.arch=mlp", "model.hidden=8", "model.depth=1", "train.batch_size=8", "telemetry.progress=false",
        "telemetry.sample_every=0", "checkpoint.every=2", "checkpoint.keep_last=5"]


def _train(run_dir, steps, extra=()):
    return run_training(load_config(None, TINY + [f"train.steps={steps}", *extra]), str(run_dir))


def _tree_digest(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_manifest_lists_sha256_of_each_file_and_latest_points_to_newest(tmp_path):
    _train(tmp_path, 4)
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    assert store.valid_steps() == [2, 4]
    assert open(tmp_path / "checkpoints" / "latest").read() == "step-00000004"
    manifest = json.load(open(tmp_path / "checkpoints" / "step-00000004" / "manifest.json"))
    assert manifest["step"] == 4 and manifest["strategy"] == "single" and manifest["world_size"] == 1
    for name, sha in manifest["files"].items():
        data = open(tmp_path / "checkpoints" / "step-00000004" / name, "rb").read()
        assert hashlib.sha256(data).hexdigest() == sha


def test_truncated_checkpoint_is_refused_and_previous_one_used(tmp_path, caplog):
    _train(tmp_path, 4)
    shared = tmp_path / "checkpoints" / "step-00000004" / "shared.pt"
    shared.write_bytes(shared.read_bytes()[:100])
    run = gandist.load_run(str(tmp_path))
    assert run.step == 2
    assert "sha256 mismatch" in caplog.text
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        CheckpointStore(str(tmp_path / "checkpoints")).load(4)


def test_checkpoint_without_manifest_does_not_exist(tmp_path):
    _train(tmp_path, 4)
    os.remove(tmp_path / "checkpoints" / "step-00000004" / "manifest.json")
    summary = _train(tmp_path, 6)  # resumes from step 2, not from the half-written 4
    assert summary["steps"] == 6
    events = [json.loads(line) for line in open(tmp_path / "events.jsonl")]
    starts = [e for e in events if e["event"] == "start"]
    assert starts[-1]["resumed_from"] == 2


def test_retention_keeps_last_k(tmp_path):
    run_training(load_config(None, TINY + ["train.steps=10", "checkpoint.keep_last=2"]), str(tmp_path))
    steps = CheckpointStore(str(tmp_path / "checkpoints")).steps()
    assert steps[-2:] == [8, 10] and len(steps) <= 3  # the newest healthy one may be kept in addition


def test_run_dir_with_other_config_is_refused_without_damage(tmp_path, cli):
    _train(tmp_path, 2)
    before = _tree_digest(tmp_path)
    proc = cli("train", os.devnull.replace("null", "null"), check_rc=None)  # not a file: exit 2
    assert proc.returncode == 2
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("model: {arch: mlp, hidden: 16, depth: 1}\ntrain: {batch_size: 8, steps: 4}\n")
    proc = cli("train", cfg_path, "--run-dir", tmp_path, check_rc=None)
    assert proc.returncode == 2
    assert "different config" in proc.stderr and "model.hidden: 8 -> 16" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _tree_digest(tmp_path) == {k: v for k, v in before.items()} | {"c.yaml": _tree_digest(tmp_path)["c.yaml"]}


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _train(tmp_path, 2)
    cfg = load_config(None, TINY + ["train.steps=4", "model.hidden=16"])
    with pytest.raises(Exception, match="different|size mismatch"):
        run_training(cfg, str(tmp_path), force=True)


def test_load_run_returns_eval_mode_nets_on_cpu(tmp_path):
    _train(tmp_path, 2)
    run = gandist.load_run(str(tmp_path))
    assert run.step == 2 and run.config.model.arch == "mlp"
    assert not run.G.training and not run.G_ema.training
    assert all(p.device.type == "cpu" and not p.requires_grad for p in run.G.parameters())
    assert run.G(torch.zeros(3, run.G.z_dim)).shape == (3, 2)
