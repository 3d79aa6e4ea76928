"""checkpoint.keep_best: the N best checkpoints by the evaluation metric survive retention (BigGAN-PyTorch's
num_best_copies), listed best first in best-ranked.json; `best` is the first of them."""
import json

from gandist.config import load_config
from gandist.train.loop import run_training


def test_the_n_best_evaluated_checkpoints_are_kept_and_ranked(tmp_path):
    cfg = load_config(None, ["model.hidden=16", "model.depth=2", "train.batch_size=32", "train.steps=8",
                             "telemetry.progress=false", "telemetry.sample_every=0", "eval.every=1",
                             "eval.metrics=[modes]", "eval.num=256", "checkpoint.every=100",
                             "checkpoint.keep_last=1", "checkpoint.keep_best=3", "optim.g.lr=5e-3",
                             "optim.d.lr=5e-3"])
    run_training(cfg, str(tmp_path))
    evals = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert len(evals) == 8
    # the evaluator's order: more modes, then more high-quality samples, then lower reverse KL
    order = sorted(evals, key=lambda m: (m["modes"], m["high_quality"], -m["reverse_kl"]), reverse=True)
    ckpts = tmp_path / "checkpoints"
    ranked = json.loads((ckpts / "best-ranked.json").read_text())
    assert [r["step"] for r in ranked] == [m["step"] for m in order[:3]]
    assert (ckpts / "best").read_text().strip() == f"step-{order[0]['step']:08d}"
    kept = sorted(int(p.name[5:]) for p in ckpts.glob("step-*"))
    assert kept == sorted({m["step"] for m in order[:3]} | {8})  # the 3 best and the last (keep_last 1)
