"""The command line as a user runs it: python -m gandist ..."""
import os

import pytest


def test_train_then_generate_is_byte_identical_for_the_same_seed(tmp_path, cli):
    cli("train", "configs/toy_ring8_tiny.yaml", "--set", "train.steps=4", "--set", "checkpoint.every=2",
        "--run-dir", tmp_path / "run")
    for name in ("config.yaml", "metrics.jsonl", "events.jsonl", "checkpoints/latest"):
        assert (tmp_path / "run" / name).exists(), name
    assert any(f.endswith(".png") for f in os.listdir(tmp_path / "run" / "samples"))
    cli("generate", tmp_path / "run", "--num", "50", "--seed", "3", "--out", tmp_path / "a.png")
    cli("generate", tmp_path / "run", "--num", "50", "--seed", "3", "--out", tmp_path / "b.png")
    cli("generate", tmp_path / "run", "--num", "50", "--seed", "4", "--out", tmp_path / "c.png")
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b and a != c and a[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_data_path_is_one_line_exit_2(tmp_path, cli):
    proc = cli("train", "configs/demo_digits.yaml", "--set", "data={kind: folder, path: /nonexistent/imgs}",
               "--run-dir", tmp_path, check_rc=2)
    assert "data.path" in proc.stderr and "/nonexistent/imgs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_misspelt_key_exit_2(tmp_path, cli):
    proc = cli("train", "configs/demo_digits.yaml", "--set", "train.batch_sise=3", "--run-dir", tmp_path, check_rc=2)
    assert "train.batch_sise: unknown key (did you mean batch_size?)" in proc.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_generate_from_a_dir_without_checkpoints_is_a_clear_error(tmp_path, cli):
    proc = cli("generate", tmp_path, "--out", tmp_path / "x.png", check_rc=2)
    assert "not a gandist run dir" in proc.stderr


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, repo):
    import json
    import signal
    import subprocess
    import sys
    import time

    from gandist.checkpoint import CheckpointStore

    proc = subprocess.Popen([sys.executable, "-m", "gandist", "train", "configs/toy_ring8_tiny.yaml", "--set",
                             "train.steps=100000", "--set", "checkpoint.every=1000", "--set", "telemetry.log_every=1",
                             "--run-dir", str(tmp_path)], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": repo})
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    steps = CheckpointStore(str(tmp_path / "checkpoints")).valid_steps()
    assert len(steps) == 1 and 3 <= steps[0] < 1000
    events = [json.loads(line) for line in open(tmp_path / "events.jsonl")]
    assert events[-1]["event"] == "checkpoint" and events[-1]["step"] == steps[0]


@pytest.mark.slow  # four CLI processes: ~40 s on 2 cores
def test_generate_with_standing_stats_and_a_refused_truncation_cutoff(tmp_path, cli):
    cli("train", "configs/demo_digits.yaml", "--set", "train.steps=2", "--set", "model.ch=8", "--set",
        "data.resolution=8", "--set", "telemetry.sample_every=0", "--set", "telemetry.progress=false",
        "--run-dir", tmp_path / "run")
    cli("generate", tmp_path / "run", "--num", "20", "--out", tmp_path / "plain.png")
    cli("generate", tmp_path / "run", "--num", "20", "--standing-stats", "4", "--out", tmp_path / "standing.png")
    assert (tmp_path / "plain.png").read_bytes() != (tmp_path / "standing.png").read_bytes()
    proc = cli("generate", tmp_path / "run", "--truncation", "0.7", "--truncation-cutoff", "2", "--out",
               tmp_path / "x.png", check_rc=2)
    assert "--truncation-cutoff: only a StyleGAN2 G" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
