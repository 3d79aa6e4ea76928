"""Intra-FID: per-class FID against each class's real images, then the mean."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gandist.errors import UserError


class ReplayDigits(nn.Module):
    """A 'generator' that returns real digits of class (y + shift) % 10, picked by z: the data itself when shift=0."""

    z_dim, num_classes = 4, 10

    def __init__(self, shift: int):
        super().__init__()
        from gandist.data.sources import load_digits_tensor

        self.images, self.labels = load_digits_tensor(16)
        self.shift = shift
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, z, y, truncation: float = 1.0):
        out = []
        for zi, yi in zip(z, y):
            pool = torch.nonzero(self.labels == (int(yi) + self.shift) % 10).flatten()
            out.append(self.images[pool[int(zi[0].abs() * 1e4) % len(pool)]])
        return torch.stack(out)


def evaluator(*overrides):
    from gandist.config import load_config
    from gandist.eval.periodic import Evaluator

    return Evaluator(load_config(None, ["model.arch=dcgan", "model.conditional=true", "data.kind=digits",
                                        "eval.metrics=[intra_fid]", "eval.num=600", *overrides]))


def test_intra_fid_is_small_for_the_right_classes_and_large_for_swapped_ones(untrained_digits_cache):
    from gandist.data.sources import load_digits_tensor
    from gandist.eval.fid import FeatureStats, frechet_distance

    right = evaluator().evaluate(ReplayDigits(0))
    swapped = evaluator().evaluate(ReplayDigits(1))
    assert len(right["intra_fid_per_class"]) == 10
    assert right["intra_fid"] == pytest.approx(sum(right["intra_fid_per_class"]) / 10)
    # each class compared with its own real images: drawing real digits of class c scores far below drawing c + 1
    assert max(right["intra_fid_per_class"]) < min(swapped["intra_fid_per_class"])
    # class 3 of the swapped generator is the FID of 60 real 4s against all real 3s, computed here directly
    x, labels = load_digits_tensor(16)
    net = untrained_digits_cache["net"]
    G = ReplayDigits(1)
    gen = torch.Generator()
    from gandist.randomness import stream_seed

    gen.manual_seed(stream_seed(1234, "intra-z", 3, 0))
    fake_images = G(torch.randn(60, 4, generator=gen), torch.full((60,), 3))
    real, fake = FeatureStats(128), FeatureStats(128)
    real.update(net(x[labels == 3])[0])
    fake.update(net(fake_images)[0])
    assert swapped["intra_fid_per_class"][3] == pytest.approx(frechet_distance(*real.mean_cov(), *fake.mean_cov()),
                                                              rel=1e-6)


def test_intra_fid_needs_labels_and_a_conditional_generator(untrained_digits_cache):
    from gandist.config import load_config
    from gandist.eval.periodic import Evaluator

    with pytest.raises(UserError, match="intra_fid needs labelled data"):
        Evaluator(load_config(None, ["model.arch=dcgan", "data.kind=stacked_digits", "eval.metrics=[intra_fid]"]))
    G = ReplayDigits(0)
    G.num_classes = 0
    with pytest.raises(UserError, match="conditioned on the data's 10 classes, this one has no classes"):
        evaluator().evaluate(G)
