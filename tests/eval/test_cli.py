"""`gandist eval` and `gandist features` end to end on a short real ring8 training run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gandist.cli import main

ROOT = Path(__file__).resolve().parents[2]


def ring8_config(steps: int):
    from gandist.config import load_config

    return load_config(ROOT / "configs" / "toy_ring8_tiny.yaml", [
        f"train.steps={steps}", "checkpoint.every=100", "eval.every=100", "eval.num=1000", "eval.metrics=[modes]",
        "telemetry.progress=false"])


@pytest.fixture(scope="module")
def ring8_run(tmp_path_factory):
    """A 300-step ring8 run with periodic evaluation every 100 steps (modes, 1000 samples)."""
    from gandist.train.loop import run_training

    run_dir = tmp_path_factory.mktemp("ring8") / "run"
    run_training(ring8_config(300), str(run_dir))
    return run_dir


@pytest.mark.slow
def test_eval_cli_reproduces_the_periodic_evaluation_of_the_same_checkpoint(ring8_run, capsys):
    periodic = [json.loads(line) for line in (ring8_run / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in periodic] == [100, 200, 300]
    assert main(["eval", str(ring8_run), "--num", "1000", "--metrics", "modes", "--checkpoint", "latest"]) == 0
    out = json.loads((ring8_run / "eval" / "eval-00000300.json").read_text())
    for key in ("modes", "high_quality", "reverse_kl"):
        assert out[key] == periodic[-1][key], key  # same G_ema, same seeded latents
    assert 0 <= out["modes"] <= 8 and 0.0 <= out["high_quality"] <= 1.0 and out["reverse_kl"] >= 0.0
    assert out["samples"] == 1000 and out["net"] == "G_ema"
    table = capsys.readouterr().out
    assert "high_quality" in table and "eval-00000300.json" in table
    # the best checkpoint (most modes, then quality) is tagged and loadable
    best_step = max(periodic, key=lambda m: (m["modes"], m["high_quality"], -m["reverse_kl"]))["step"]
    assert main(["eval", str(ring8_run), "--checkpoint", "best", "--num", "1000", "--out", str(ring8_run / "best.json")]) == 0
    assert json.loads((ring8_run / "best.json").read_text())["step"] == best_step


@pytest.mark.slow
def test_best_so_far_survives_a_resume(ring8_run, tmp_path):
    from gandist.eval.periodic import Evaluator
    from gandist.train.loop import Trainer, run_training

    run_dir = tmp_path / "legs"
    run_training(ring8_config(200), str(run_dir))
    periodic = [json.loads(line) for line in (run_dir / "eval" / "metrics.jsonl").read_text().splitlines()]
    ranker = Evaluator(ring8_config(200), str(run_dir))
    best_before = max(ranker._rank_key(m) for m in periodic)
    trainer = Trainer(ring8_config(300), str(run_dir))  # resumes from step 200
    try:
        assert trainer.step == 200 and trainer.evaluator.best == best_before
    finally:
        trainer.close()
    run_training(ring8_config(300), str(run_dir))
    # two legs tag the same checkpoint best as the uninterrupted run (exact resume + the best carried over)
    assert (run_dir / "checkpoints" / "best").read_text() == (ring8_run / "checkpoints" / "best").read_text()


def test_eval_of_a_folder_without_checkpoints_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("name: empty\n")
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoints" in err and str(tmp_path) in err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_eval_rejects_unknown_metrics_and_too_few_samples(ring8_run, capsys):
    assert main(["eval", str(ring8_run), "--metrics", "fid,bogus"]) == 2
    assert "unknown bogus" in capsys.readouterr().err
    assert main(["eval", str(ring8_run), "--metrics", "fid"]) == 2
    assert "toy2d data supports only modes" in capsys.readouterr().err


def test_features_command_writes_a_loadable_digits_network(tmp_path, capsys):
    from gandist.eval.features import load_digits_net

    assert main(["features", "digits", "--out", str(tmp_path), "--epochs", "1"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    net = load_digits_net(tmp_path)
    assert net.head.out_features == 10
