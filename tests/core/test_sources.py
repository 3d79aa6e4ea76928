import pytest
import torch

from gandist.config import load_config
from gandist.data.sources import build_source, toy2d_centres
from gandist.errors import UserError


def _draws(source, rank, world, batch, n=3):
    it = source.loader(rank, world, batch, seed=7)
    return [next(it) for _ in range(n)]


def test_global_batch_is_world_size_invariant():
    for overrides in (["data.kind=toy2d"], ["data.kind=digits", "model.arch=dcgan"], ["data.kind=toy2d", "data.mixture=grid25"]):
        source = build_source(load_config(None, overrides).data)
        one = _draws(source, 0, 1, 8)
        halves = [_draws(source, r, 2, 8) for r in range(2)]
        for k in range(3):
            x = torch.cat([halves[0][k][0], halves[1][k][0]])
            assert torch.equal(x, one[k][0])
            if one[k][1] is not None:
                assert torch.equal(torch.cat([halves[0][k][1], halves[1][k][1]]), one[k][1])


def test_micro_batches_hold_the_same_samples_at_every_world_size():
    # global batch 12 in 2 micro-batches: micro-batch i is samples [6i, 6i+6) whether 1, 2 or 3 ranks share it
    source = build_source(load_config(None, ["data.kind=digits", "model.arch=dcgan"]).data)
    whole = next(source.loader(0, 1, 12, seed=7))[0]
    for world in (1, 2, 3):
        parts = [next(source.loader(r, world, 12, seed=7, micro_batches=2))[0] for r in range(world)]
        per = 6 // world
        for i in range(2):
            micro = torch.cat([p[i * per:(i + 1) * per] for p in parts])
            assert torch.equal(micro, whole[6 * i:6 * (i + 1)]), (world, i)
    with pytest.raises(UserError, match="train.batch_size 12 is not divisible by world size 2 x optim.accumulation 4"):
        source.loader(0, 2, 12, seed=7, micro_batches=4)


def test_toy2d_samples_lie_on_their_modes():
    centres, std = toy2d_centres("ring8")
    assert torch.allclose(centres.norm(dim=1), torch.full((8,), 2.0), atol=1e-5)
    source = build_source(load_config(None, ["data.kind=toy2d"]).data)
    x, _ = next(source.loader(0, 1, 4096, seed=0))
    nearest = torch.cdist(x, centres).min(1).values
    assert float(nearest.max()) < 6 * std
    grid, gstd = toy2d_centres("grid25")
    assert grid.shape == (25, 2) and set(grid[:, 0].tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0} and gstd == 0.05


def test_digits_cover_every_image_once_per_epoch_and_resume_position():
    source = build_source(load_config(None, ["data.kind=digits", "data.resolution=16", "model.arch=dcgan"]).data)
    assert source.info.shape == (1, 16, 16) and source.info.num_classes == 10
    it = source.loader(0, 1, 599, seed=1)  # 3 * 599 = 1797: exactly one epoch
    ys = torch.cat([next(it)[1] for _ in range(3)])
    assert torch.equal(torch.bincount(ys), torch.bincount(source.labels))
    state = it.state_dict()
    expected = next(it)[0]
    fresh = source.loader(0, 1, 599, seed=1)
    fresh.load_state_dict(state)
    assert torch.equal(next(fresh)[0], expected)
