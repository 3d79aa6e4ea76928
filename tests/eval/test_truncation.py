"""`gandist eval RUN --truncation`: metrics per psi (same latents, same reference), JSON and PNG."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from gandist.cli import main


def test_truncation_curve_writes_metrics_per_psi_and_a_plot(untrained_digits_cache, tiny_digits_run, tmp_path):
    out = tmp_path / "curve.json"
    assert main(["eval", str(tiny_digits_run), "--truncation", "1.0,0.5,0.1", "--metrics", "fid,is,pr",
                 "--num", "120", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["curve"]
    assert [r["truncation"] for r in rows] == [1.0, 0.5, 0.1]
    assert result["plotted"] == ["fid", "is", "precision", "recall", "density", "coverage", "is_vs_fid"]
    with Image.open(result["plot"]) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 500  # 7 panels on a 4-wide grid
    # psi = 1 is the plain evaluation of the same checkpoint
    plain = tmp_path / "plain.json"
    assert main(["eval", str(tiny_digits_run), "--metrics", "fid,is,pr", "--num", "120", "--out", str(plain)]) == 0
    assert rows[0]["fid"] == pytest.approx(json.loads(plain.read_text())["fid"], rel=1e-9)
    # DCGAN truncates by scaling z: the psi = 0.1 row is the plain evaluation of z -> G(0.1 z), not of G(z)
    from gandist.api import load_run
    from gandist.eval.periodic import Evaluator

    run = load_run(str(tiny_digits_run))

    class Scaled(torch.nn.Module):
        z_dim, num_classes = run.G_ema.z_dim, run.G_ema.num_classes

        def __init__(self):
            super().__init__()
            self.G = run.G_ema

        def forward(self, z, y=None):
            return self.G(0.1 * z, y)

    evaluator = Evaluator(run.config, metrics=["fid", "is", "pr"], num=120)
    scaled = evaluator.evaluate(Scaled())
    for key in ("fid", "is", "precision", "recall"):
        assert rows[2][key] == pytest.approx(scaled[key], rel=1e-9), key
    assert rows[2]["fid"] != pytest.approx(rows[0]["fid"], rel=1e-3)


@pytest.mark.parametrize("text, message", [("1.0,x", "'x' is not a number"), ("1.0,-0.5", "psi must be positive")])
def test_bad_truncation_lists_are_one_line_errors(tiny_digits_run, capsys, text, message):
    assert main(["eval", str(tiny_digits_run), "--truncation", text]) == 2
    assert message in capsys.readouterr().err
