"""`gandist eval stats`: statistics of the whole dataset, keyed, reused by the Evaluator, refused on a mismatch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gandist.cli import main
from gandist.errors import UserError


class NoiseImages(nn.Module):
    """A stand-in generator: z -> tanh(linear(z)) as 16x16 grey images."""

    z_dim, num_classes = 8, 0

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(8, 256)

    def forward(self, z, y=None, truncation: float = 1.0):
        return torch.tanh(self.fc(z * truncation)).view(-1, 1, 16, 16)


def digits_config(*overrides):
    from gandist.config import load_config

    return load_config(None, ["model.arch=dcgan", "data.kind=digits", "eval.metrics=[fid]", "eval.num=200",
                              "eval.batch_size=100", *overrides])


def test_stats_cover_every_image_unflipped_and_are_cached_by_key(untrained_digits_cache, tmp_path, capsys):
    from gandist.data.sources import load_digits_tensor

    out = tmp_path / "stats.npz"
    assert main(["eval", "stats", "digits", "--out", str(out)]) == 0
    with np.load(out) as data:
        mu, sigma, n = data["mu"], data["sigma"], int(data["n"])
    x, _ = load_digits_tensor(16)
    with torch.no_grad():
        f = untrained_digits_cache["net"](x)[0].double().numpy()
    assert n == 1797
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-5, atol=1e-9)
    capsys.readouterr()
    assert main(["eval", "stats", "digits", "--out", str(out)]) == 0  # same key: nothing recomputed
    assert "up to date" in capsys.readouterr().out
    assert main(["eval", "stats", "digits", "--out", str(out), "--resolution", "32"]) == 2  # another key
    assert "resolution is 16 in the file, 32 here" in capsys.readouterr().err


def test_evaluator_reuses_the_stats_file_and_names_its_sha256(untrained_digits_cache, tmp_path):
    from gandist.eval.periodic import Evaluator
    from gandist.eval.reference_stats import file_sha256

    out = tmp_path / "stats.npz"
    assert main(["eval", "stats", "digits", "--out", str(out)]) == 0
    G = NoiseImages()
    stored = Evaluator(digits_config(f"eval.reference_stats={out}")).evaluate(G)
    assert stored["reference_stats_sha256"] == file_sha256(out)
    # the same FID as against statistics of all 1797 real images computed here (reference_num = all, no flips
    # matter: digits have none), and not the FID against a 200-image reference
    full = Evaluator(digits_config("eval.reference_num=1797")).evaluate(G)
    assert stored["fid"] == pytest.approx(full["fid"], rel=1e-6)
    small = Evaluator(digits_config()).evaluate(G)
    assert abs(small["fid"] - stored["fid"]) > 1e-3 * stored["fid"]


def test_a_stats_file_of_other_settings_is_refused_before_work(untrained_digits_cache, tmp_path):
    from gandist.eval.periodic import Evaluator

    out = tmp_path / "stats.npz"
    assert main(["eval", "stats", "digits", "--out", str(out)]) == 0
    with pytest.raises(UserError, match=r"eval.reference_stats: .*resolution is 16 in the file, 32 here"):
        Evaluator(digits_config("data.resolution=32", f"eval.reference_stats={out}"))
    with pytest.raises(UserError, match="not found; create it with `gandist eval stats"):
        Evaluator(digits_config(f"eval.reference_stats={tmp_path / 'missing.npz'}"))
