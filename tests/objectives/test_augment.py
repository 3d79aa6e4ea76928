"""DiffAugment, instance noise and PacGAN packing: closed forms, hand-computed values, world-size invariance."""
import pytest
import torch

from gandist.objectives.augment import (
    add_instance_noise, cutout_mask, diff_augment, instance_noise_std, pack, prepare_d_input,
    rand_cutout, rand_translation, translate,
)
from gandist.objectives.config import AugmentConfig, InstanceNoiseConfig
from gandist.randomness import GlobalRandom


def rand_for(n: int, offset: int = 0, global_n: int | None = None, step: int = 3, tag: str = "D") -> GlobalRandom:
    return GlobalRandom(seed=7, step=step, tag=tag, offset=offset, global_n=global_n or n)


def images(n: int = 8, c: int = 3, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(1))


def test_translation_with_zero_shift_is_identity():
    x = images()
    zero = torch.zeros(x.shape[0], 1, 1, dtype=torch.long)
    assert torch.equal(translate(x, zero, zero), x)
    # ratio 0 draws shifts in [0, 0]
    assert torch.equal(rand_translation(x, rand_for(8), ratio=0.0), x)


def test_translation_moves_pixels_by_the_shift_and_fills_zeros():
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    shift = lambda v: torch.tensor([[[v]]])  # noqa: E731
    # out[i, j] = x[i + 1, j - 1]: rows move up by one, columns right by one
    out = translate(x, shift(1), shift(-1))
    assert out[0, 0].tolist() == [[0, 4, 5], [0, 7, 8], [0, 0, 0]]


def test_diffaugment_is_world_size_invariant():
    x = images(8)
    full = diff_augment(x, "color,translation,cutout", rand_for(8))
    halves = [diff_augment(x[i * 4:(i + 1) * 4], "color,translation,cutout", rand_for(4, offset=i * 4, global_n=8))
              for i in range(2)]
    assert torch.equal(torch.cat(halves), full)
    assert not torch.equal(full, x)


def test_diffaugment_draws_differ_between_steps_and_tags():
    x = images(4)
    a = diff_augment(x, "translation,cutout", rand_for(4, step=1))
    assert not torch.equal(a, diff_augment(x, "translation,cutout", rand_for(4, step=2)))
    assert not torch.equal(a, diff_augment(x, "translation,cutout", rand_for(4, tag="G")))
    assert torch.equal(a, diff_augment(x, "translation,cutout", rand_for(4, step=1)))


def test_color_on_a_constant_gray_image_only_shifts_brightness():
    # saturation is the identity on one channel and contrast on a constant image: out = c + (u - 0.5)
    x = torch.full((5, 1, 4, 4), 0.3)
    out = diff_augment(x, "color", rand_for(5))
    u = rand_for(5).rand(5, 1, 1, 1)  # the first draw of the same stream: brightness
    assert torch.allclose(out, (0.3 + u - 0.5).expand_as(x), atol=1e-6)


def test_color_matches_the_official_formulas():
    x = images(4)
    replay = rand_for(4)
    b, s, c = (replay.rand(4, 1, 1, 1) for _ in range(3))
    expected = x + (b - 0.5)
    mean_c = expected.mean(dim=1, keepdim=True)
    expected = (expected - mean_c) * (s * 2) + mean_c
    mean_all = expected.mean(dim=[1, 2, 3], keepdim=True)
    expected = (expected - mean_all) * (c + 0.5) + mean_all
    assert torch.allclose(diff_augment(x, "color", rand_for(4)), expected, atol=1e-6)


def test_translation_shifts_are_uniform_over_the_official_range():
    # a single bright pixel in the centre of 16x16: its displacement is the drawn shift, uniform in [-2, 2]
    n = 5000
    x = torch.zeros(n, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = rand_translation(x, rand_for(n))
    flat = out.reshape(n, -1).argmax(1)
    dh, dw = 8 - flat // 16, 8 - flat % 16
    assert set(dh.tolist()) == {-2, -1, 0, 1, 2} and set(dw.tolist()) == {-2, -1, 0, 1, 2}
    counts = torch.bincount(dh + 2).float() / n
    assert torch.allclose(counts, torch.full((5,), 0.2), atol=0.03)


def _expected_cutout_fraction(side: int, size: int) -> float:
    """E[covered length]/side over the official centre range, clipped at borders (enumerated)."""
    centres = range(side + (1 - size % 2))
    covered = [len(set(range(o - size // 2, o - size // 2 + size)) & set(range(side))) for o in centres]
    return sum(covered) / len(covered) / side


def test_cutout_zeroes_the_expected_area_fraction():
    n = 4000
    x = torch.ones(n, 3, 16, 16)
    out = rand_cutout(x, rand_for(n), ratio=0.5)
    zero_fraction = (out[:, 0] == 0).float().mean().item()
    expected = _expected_cutout_fraction(16, 8) ** 2  # (116/17/16)^2 = 0.1819
    assert expected == pytest.approx(0.1819, abs=1e-4)
    assert zero_fraction == pytest.approx(expected, abs=0.006)
    # every channel is cut by the same mask, and no box exceeds 8x8
    assert torch.equal(out[:, 0], out[:, 2])
    assert (out[:, 0] == 0).sum((1, 2)).max().item() == 64


def test_cutout_box_inside_the_image_has_the_full_size():
    centre = torch.tensor([[[8]]])
    mask = cutout_mask(1, 16, 16, centre, centre, (8, 8))
    assert (mask == 0).sum().item() == 64
    assert mask[0, 4:12, 4:12].sum().item() == 0


def test_diffaugment_passes_gradients_to_the_input():
    x = images(4).requires_grad_(True)
    diff_augment(x, "color,translation,cutout", rand_for(4)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diffaugment_on_vectors_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="augment.diffaugment=''"):
        diff_augment(torch.zeros(4, 2), "translation", rand_for(4))


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="allowed: color, translation, cutout"):
        diff_augment(images(2), "rotate", rand_for(2))


@pytest.mark.parametrize("step, expected", [(0, 0.5), (25, 0.375), (50, 0.25), (100, 0.0), (150, 0.0)])
def test_instance_noise_std_anneals_linearly(step, expected):
    assert instance_noise_std(0.5, 100, step) == pytest.approx(expected)
    x = torch.zeros(2000, 2, 4, 4)
    cfg = AugmentConfig(instance_noise=InstanceNoiseConfig(std=0.5, anneal_steps=100))
    out, _ = prepare_d_input(x, None, cfg, step, rand_for(2000))
    assert (out - x).std().item() == pytest.approx(expected, abs=0.01)


def test_instance_noise_without_annealing_is_constant():
    assert instance_noise_std(0.1, 0, 10_000) == 0.1
    assert add_instance_noise(torch.ones(3, 2), 0.0, rand_for(3)).equal(torch.ones(3, 2))


def test_pack_concatenates_consecutive_samples_along_channels():
    x = torch.arange(6 * 3 * 2 * 2, dtype=torch.float32).reshape(6, 3, 2, 2)
    packed = pack(x, 2)
    assert packed.shape == (3, 6, 2, 2)
    for i in range(3):
        for j in range(2):
            assert torch.equal(packed[i, j * 3:(j + 1) * 3], x[i * 2 + j])


def test_pack_of_2d_points_gives_vectors_of_2m():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0], [10.0, 11.0]])
    assert pack(x, 3).tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert pack(x, 1) is x


def test_pack_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(ValueError, match="augment.pack: 4 does not divide this batch of 6"):
        pack(torch.zeros(6, 2), 4)


def test_prepare_d_input_applies_augment_then_noise_then_packing():
    x = images(8)
    y = torch.arange(8)
    cfg = AugmentConfig(diffaugment="translation,cutout", instance_noise=InstanceNoiseConfig(std=0.2), pack=2)
    out, out_y = prepare_d_input(x, y, cfg, 5, rand_for(8))
    replay = rand_for(8)
    expected = add_instance_noise(diff_augment(x, "translation,cutout", replay), 0.2, replay)
    assert out_y is None
    assert torch.equal(out, pack(expected, 2))


def test_prepare_d_input_without_options_is_identity():
    x, y = images(4), torch.arange(4)
    out, out_y = prepare_d_input(x, y, AugmentConfig(), 0, rand_for(4))
    assert out is x and out_y is y


def test_prepare_d_input_is_world_size_invariant():
    x = images(8)
    cfg = AugmentConfig(diffaugment="color,translation,cutout", instance_noise=InstanceNoiseConfig(std=0.1), pack=2)
    full, _ = prepare_d_input(x, None, cfg, 9, rand_for(8))
    parts = [prepare_d_input(x[r * 4:(r + 1) * 4], None, cfg, 9, rand_for(4, offset=r * 4, global_n=8))[0]
             for r in range(2)]
    assert torch.equal(torch.cat(parts), full)


@pytest.mark.parametrize("shape", [(3,), (3, 64, 64)], ids=["full-draw", "per-sample-streams"])
def test_global_random_slices_equal_the_full_draw(shape):
    full = rand_for(6).randn(6, *shape)
    parts = [rand_for(2, offset=r * 2, global_n=6).randn(2, *shape) for r in range(3)]
    assert torch.equal(torch.cat(parts), full)
    if len(shape) > 1:  # 12288 values per sample: the std is measurable
        assert full.std().item() == pytest.approx(1.0, abs=0.02)
    # consecutive calls are independent streams
    twice = rand_for(6)
    assert not torch.equal(twice.randn(6, *shape), twice.randn(6, *shape))


def test_large_instance_noise_is_world_size_invariant():
    x = torch.zeros(4, 3, 64, 64)
    cfg = AugmentConfig(instance_noise=InstanceNoiseConfig(std=0.3))
    full, _ = prepare_d_input(x, None, cfg, 0, rand_for(4))
    parts = [prepare_d_input(x[r * 2:(r + 1) * 2], None, cfg, 0, rand_for(2, offset=r * 2, global_n=4))[0]
             for r in range(2)]
    assert torch.equal(torch.cat(parts), full)
    assert full.std().item() == pytest.approx(0.3, abs=0.01)
