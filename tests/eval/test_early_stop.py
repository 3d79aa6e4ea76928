"""eval.early_stop: a run stops when the metric has not improved for `patience` evaluations, with its event, the best
checkpoint kept and exit 0; a re-run on the stopped run dir stops at once; bad keys and metric names are refused."""
import json
import os

import pytest

from gandist.cli import main
from gandist.config import ConfigError, load_config
from gandist.train.loop import run_training

# configs/toy_ring8_tiny.yaml's reverse KL to the 8 modes falls to ~0.16 by step 40, then rises again
TOY = ["telemetry.progress=false", "telemetry.sample_every=0", "eval.every=10", "eval.metrics=[modes]",
       "eval.num=256", "checkpoint.every=1000", "checkpoint.keep_last=1"]
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                      "toy_ring8_tiny.yaml")
STOP = "eval.early_stop={metric: reverse_kl, patience: 3, min_delta: 0.01}"


def _events(run_dir, kind):
    return [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()) if e["event"] == kind]


def test_a_run_stops_early_with_its_event_and_best_checkpoint_and_exit_0(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["train", CONFIG, "--run-dir", str(run_dir)] + [a for o in TOY + [STOP, "train.steps=300"] for a in ("--set", o)]
    assert main(argv) == 0
    evals = [json.loads(line) for line in (run_dir / "eval" / "metrics.jsonl").read_text().splitlines()]
    # the rule, recomputed from the evaluations: the first step with 3 evaluations in a row not beating (below) the
    # best by more than 0.01
    best, best_step, since, expected = None, None, 0, None
    for m in evals:
        if best is None or m["reverse_kl"] < best - 0.01:
            best, best_step, since = m["reverse_kl"], m["step"], 0
        else:
            since += 1
        if since >= 3:
            expected = m["step"]
            break
    assert expected is not None and 40 <= expected < 300 and best_step > 10, evals
    assert evals[-1]["step"] == expected  # no evaluation (and no step) after the stop
    (stop,) = _events(run_dir, "early_stop")
    stop.pop("time")
    assert stop == {"step": expected, "event": "early_stop", "metric": "reverse_kl", "best": best,
                    "best_step": best_step, "patience": 3, "min_delta": 0.01, "evaluations_without_improvement": 3}
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "best").read_text().strip() == f"step-{best_step:08d}"  # ranked by the early-stop metric
    assert (ckpts / f"step-{best_step:08d}").is_dir()
    assert (ckpts / "latest").read_text().strip() == f"step-{expected:08d}"  # the stop step is saved
    assert _events(run_dir, "end")[0]["steps"] == expected

    # started again on its run dir, the stopped run stops at once: no step, no second event
    cfg = load_config(CONFIG, TOY + [STOP, "train.steps=300"])
    assert run_training(cfg, str(run_dir))["steps"] == expected
    assert len(_events(run_dir, "early_stop")) == 1


@pytest.mark.parametrize("overrides, message", [
    (["eval.early_stop={metric: fidd, patience: 2}"], "eval.early_stop.metric: Value error, unknown metric 'fidd'"),
    (["eval.early_stop={metric: fid, patience: 0}"], "eval.early_stop.patience: Input should be greater than or equal to 1"),
    (["eval.early_stop={metric: fid, patience: 2, min_delta: -1}"], "eval.early_stop.min_delta: Input should be greater"),
    (["eval.early_stop={metric: fid, patience: 2, mode: min}"], "eval.early_stop.mode"),
    (["eval.early_stop={metric: fid}"], "eval.early_stop.patience: Field required"),
    (["eval.every=0", "eval.early_stop={metric: fid, patience: 2}"], "eval.every=0 turns them off"),
    (["eval.metrics=[fid]", "eval.early_stop={metric: recall, patience: 2}"],
     "eval.early_stop.metric=recall is computed by eval.metrics entry 'pr'"),
    (["eval.best_metric=kid", "eval.metrics=[fid, kid]", "eval.early_stop={metric: fid, patience: 2}"],
     "eval.best_metric=kid: the best checkpoint kept would be by another metric"),
])
def test_bad_early_stop_keys_and_metric_names_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, ["eval.every=5"] + overrides)


def test_a_metric_the_default_metrics_do_not_compute_is_refused_before_training(tmp_path):
    # toy2d evaluates modes by default: fid is never computed
    cfg = load_config(None, TOY[:2] + ["eval.every=1", "eval.early_stop={metric: fid, patience: 2}", "train.steps=2"])
    with pytest.raises(Exception, match="eval.early_stop.metric=fid is computed by 'fid', which this run does not "
                                        "evaluate \\(modes\\); add it to eval.metrics"):
        run_training(cfg, str(tmp_path / "run"))


def test_a_resumed_run_keeps_counting_and_stops_where_the_straight_run_does(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(load_config(CONFIG, TOY + [STOP, "train.steps=300"]), str(straight))
    # step 50: the best so far is step 40's and one evaluation has not improved on it
    run_training(load_config(CONFIG, TOY + [STOP, "train.steps=50"]), str(resumed))
    assert _events(resumed, "early_stop") == []
    run_training(load_config(CONFIG, TOY + [STOP, "train.steps=300"]), str(resumed))
    a, b = _events(straight, "early_stop")[0], _events(resumed, "early_stop")[0]
    assert {k: v for k, v in a.items() if k != "time"} == {k: v for k, v in b.items() if k != "time"}
