"""Augmentations of D's inputs: DiffAugment, instance noise, PacGAN packing (random draws from gandist.randomness)."""
from __future__ import annotations


import torch

from gandist.objectives.config import DIFFAUGMENT_POLICIES, parse_names
from gandist.randomness import GlobalRandom


# ---------------------------------------------------------------------------------------------------------------
# DiffAugment (Zhao et al. 2020, https://github.com/mit-han-lab/data-efficient-gans): the official formulas, with
# every random number drawn from a GlobalRandom so that a sample's augmentation does not depend on the world size.

POLICIES = DIFFAUGMENT_POLICIES


def parse_policy(policy: str) -> list[str]:
    """'color, translation' -> ['color', 'translation']; raises ValueError naming an unknown policy."""
    return parse_names(policy, POLICIES, "DiffAugment policy")


def _draw(rand: GlobalRandom, x: torch.Tensor) -> torch.Tensor:
    """One uniform number per sample, shaped [N, 1, 1, 1] to broadcast over an image batch."""
    return rand.rand(x.shape[0], 1, 1, 1).to(device=x.device, dtype=x.dtype)


def _randint(rand: GlobalRandom, n: int, low: int, high: int) -> torch.Tensor:
    """Integers uniform in [low, high) per sample, shape [N, 1, 1] (torch.randint's law, from GlobalRandom)."""
    u = rand.rand(n, 1, 1).double()  # float64: u * (high - low) stays < high - low
    return (low + (u * (high - low)).floor().long()).clamp_(max=high - 1)


def rand_color(x: torch.Tensor, rand: GlobalRandom) -> torch.Tensor:
    """Brightness +U[-0.5, 0.5), saturation *U[0, 2), contrast *U[0.5, 1.5) per sample (official order)."""
    x = x + (_draw(rand, x) - 0.5)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (_draw(rand, x) * 2) + mean_c
    mean_all = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean_all) * (_draw(rand, x) + 0.5) + mean_all


def translate(x: torch.Tensor, shift_h: torch.Tensor, shift_w: torch.Tensor) -> torch.Tensor:
    """out[n, c, i, j] = x[n, c, i + shift_h[n], j + shift_w[n]], zero outside the image (shifts: [N, 1, 1] long)."""
    n, _, h, w = x.shape
    grid_b, grid_h, grid_w = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device),
        indexing="ij",
    )
    # index into a 1-pixel zero-padded copy: clamping to the pad row/column reads a zero
    grid_h = torch.clamp(grid_h + shift_h.to(x.device) + 1, 0, h + 1)
    grid_w = torch.clamp(grid_w + shift_w.to(x.device) + 1, 0, w + 1)
    x_pad = torch.nn.functional.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1)[grid_b, grid_h, grid_w].permute(0, 3, 1, 2).contiguous()


def rand_translation(x: torch.Tensor, rand: GlobalRandom, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by integers in [-ratio*size, ratio*size] along H and W, filling with zeros."""
    shift_h, shift_w = int(x.shape[2] * ratio + 0.5), int(x.shape[3] * ratio + 0.5)
    th = _randint(rand, x.shape[0], -shift_h, shift_h + 1)
    tw = _randint(rand, x.shape[0], -shift_w, shift_w + 1)
    return translate(x, th, tw)


def cutout_mask(n: int, h: int, w: int, offset_h: torch.Tensor, offset_w: torch.Tensor, size: tuple[int, int],
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """[N, H, W] mask, 0 inside the size[0] x size[1] box centred at each (offset_h, offset_w), clipped to the image."""
    grid_b, grid_h, grid_w = torch.meshgrid(
        torch.arange(n, device=device), torch.arange(size[0], device=device), torch.arange(size[1], device=device),
        indexing="ij",
    )
    grid_h = torch.clamp(grid_h + offset_h.to(device) - size[0] // 2, min=0, max=h - 1)
    grid_w = torch.clamp(grid_w + offset_w.to(device) - size[1] // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w, dtype=dtype, device=device)
    mask[grid_b, grid_h, grid_w] = 0
    return mask


def rand_cutout(x: torch.Tensor, rand: GlobalRandom, ratio: float = 0.5) -> torch.Tensor:
    """Zero a (ratio*H) x (ratio*W) box at a uniform centre per image (boxes are clipped at the borders)."""
    n, _, h, w = x.shape
    size = int(h * ratio + 0.5), int(w * ratio + 0.5)
    offset_h = _randint(rand, n, 0, h + (1 - size[0] % 2))
    offset_w = _randint(rand, n, 0, w + (1 - size[1] % 2))
    mask = cutout_mask(n, h, w, offset_h, offset_w, size, dtype=x.dtype, device=x.device)
    return x * mask.unsqueeze(1)


def diff_augment(x: torch.Tensor, policy: str, rand: GlobalRandom, translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5) -> torch.Tensor:
    """Apply the comma-separated DiffAugment policies to an image batch [N, C, H, W]; differentiable in x."""
    names = parse_policy(policy)
    if not names:
        return x
    if x.dim() != 4:
        raise ValueError(
            f"DiffAugment ({policy!r}) needs image batches [N, C, H, W], got shape {list(x.shape)}; "
            "set augment.diffaugment='' for non-image data"
        )
    for name in names:
        if name == "color":
            x = rand_color(x, rand)
        elif name == "translation":
            x = rand_translation(x, rand, translation_ratio)
        else:
            x = rand_cutout(x, rand, cutout_ratio)
    return x.contiguous()


def consistency_transform(x: torch.Tensor, policy: str, rand: GlobalRandom) -> torch.Tensor:
    """The transform T of consistency regularization (bCR): DiffAugment with `policy` at the official ratios."""
    return diff_augment(x, policy, rand)


# ---------------------------------------------------------------------------------------------------------------
# Instance noise and PacGAN packing


def instance_noise_std(std: float, anneal_steps: int, step: int) -> float:
    """Noise std at `step`: std * (1 - step/anneal_steps), floored at 0; constant when anneal_steps is 0."""
    if anneal_steps <= 0:
        return float(std)
    return float(std) * max(0.0, 1.0 - step / anneal_steps)


def add_instance_noise(x: torch.Tensor, std: float, rand: GlobalRandom) -> torch.Tensor:
    """x + std * N(0, 1) with the noise drawn per sample from `rand` (nothing drawn when std is 0)."""
    if std <= 0:
        return x
    noise = rand.randn(x.shape[0], *x.shape[1:]).to(device=x.device, dtype=x.dtype)
    return x + std * noise


def pack(x: torch.Tensor, m: int) -> torch.Tensor:
    """PacGAN: [N, C, ...] -> [N/m, C*m, ...]; pack i holds samples i*m .. i*m+m-1 concatenated along dim 1."""
    if m == 1:
        return x
    if x.shape[0] % m:
        raise ValueError(f"augment.pack: {m} does not divide this batch of {x.shape[0]} samples; "
                         "choose a batch size per rank (and per micro-batch) that is a multiple of the pack size")
    return x.reshape(x.shape[0] // m, x.shape[1] * m, *x.shape[2:])


def prepare_d_input(x: torch.Tensor, y: torch.Tensor | None, cfg, step: int,
                    rand: GlobalRandom) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every D input goes through this: DiffAugment, then instance noise, then PacGAN packing (y dropped)."""
    if cfg.diffaugment:
        x = diff_augment(x, cfg.diffaugment, rand, cfg.translation_ratio, cfg.cutout_ratio)
    std = instance_noise_std(cfg.instance_noise.std, cfg.instance_noise.anneal_steps, step)
    x = add_instance_noise(x, std, rand)
    if cfg.pack > 1:
        # a packed D judges m samples at once and has no single label: the config refuses a conditional D
        return pack(x, cfg.pack), None
    return x, y
