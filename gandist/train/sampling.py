"""Sampling a generator with fixed seeds: grids in the run dir during training, and `gandist generate`."""
from __future__ import annotations

import os

import torch

from gandist.randomness import stream_seed
from gandist.telemetry import samples as png


@torch.no_grad()
def sample(G, num: int, seed: int, truncation: float = 1.0, class_id: int | None = None,
           device: torch.device | str = "cpu", batch: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """num samples from G with z ~ N(0, I) drawn from `seed` (same seed, same weights: same samples)."""
    generator = torch.Generator().manual_seed(stream_seed("sample", seed))
    z = torch.randn(num, G.z_dim, generator=generator)
    y = None
    if G.num_classes:
        if class_id is not None:
            if not 0 <= class_id < G.num_classes:
                raise ValueError(f"--class {class_id}: the generator has classes 0..{G.num_classes - 1}")
            y = torch.full((num,), class_id, dtype=torch.long)
        else:
            y = torch.arange(num) % G.num_classes
    was_training = G.training
    G.eval()
    out = []
    for i in range(0, num, batch):
        zi = z[i:i + batch].to(device)
        yi = y[i:i + batch].to(device) if y is not None else None
        kwargs = {"truncation": truncation} if truncation != 1.0 else {}
        out.append(G(zi, yi, **kwargs).float().cpu())
    G.train(was_training)
    return torch.cat(out), y


def render(x: torch.Tensor, cfg, title: str = "") -> bytes:
    """PNG of samples: an image grid, or a scatter with the mode centres for toy2d."""
    if x.dim() == 4:
        return png.image_grid_png(x)
    from gandist.data.sources import toy2d_centres

    centres = toy2d_centres(cfg.data.mixture)[0] if cfg.data.kind == "toy2d" else None
    return png.scatter_png(x, centres, title)


def write_run_samples(trainer) -> None:
    """samples/step-N.png from the EMA generator (toy2d: a scatter of 16x more points)."""
    cfg, info = trainer.cfg, trainer.info
    G = trainer.G_ema if trainer.G_ema is not None else trainer.strategy.module("G")
    num = cfg.telemetry.sample_num * (1 if info.is_image else 16)
    x, _ = sample(G, num, cfg.seed, device=trainer.strategy.device)
    path = os.path.join(trainer.run_dir, "samples", f"step-{trainer.step:08d}.png")
    png.save_png(path, render(x, cfg, f"step {trainer.step}"))
