"""Sampling a generator with fixed seeds: grids in the run dir during training, and `gandist generate`."""
from __future__ import annotations

import os

import torch
from torch import nn

from gandist.randomness import stream_seed
from gandist.telemetry import samples as png


def truncation_kwargs(G, truncation: float, cutoff: int | None) -> dict:
    """G's keyword arguments for truncation psi, and (StyleGAN2) the number of ws it applies to."""
    kwargs = {"truncation": truncation} if truncation != 1.0 else {}
    if cutoff is not None:
        num_ws = getattr(G, "num_ws", None)
        if num_ws is None:
            raise ValueError("--truncation-cutoff: only a StyleGAN2 G has per-layer ws to truncate; drop the flag")
        if not 1 <= cutoff <= num_ws:
            raise ValueError(f"--truncation-cutoff {cutoff}: this G has {num_ws} ws; give 1..{num_ws}")
        if kwargs:
            kwargs["truncation_cutoff"] = cutoff
    return kwargs


@torch.no_grad()
def standing_stats(G, passes: int, seed: int, truncation: float = 1.0, device: torch.device | str = "cpu",
                   batch: int = 64) -> None:
    """BigGAN-PyTorch's standing statistics: G's BN running statistics re-estimated as the plain average over
    `passes` forward passes of `batch` fresh latents (momentum None), for sampling in eval mode. Only the BN layers
    are put in training mode: spectral norm's power iteration and StyleGAN2's w_avg stay as trained."""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("--standing-stats: this generator has no batch norm (BigGAN, dcgan and resnet have); "
                         "drop the flag")
    was_training = G.training
    G.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the passes
        bn.train()
    generator = torch.Generator().manual_seed(stream_seed("standing", seed))
    kwargs = {"truncation": truncation} if truncation != 1.0 else {}
    for _ in range(passes):
        z = torch.randn(batch, G.z_dim, generator=generator).to(device)
        y = torch.randint(G.num_classes, (batch,), generator=generator).to(device) if G.num_classes else None
        G(z, y, **kwargs)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    G.train(was_training)


@torch.no_grad()
def sample(G, num: int, seed: int, truncation: float = 1.0, class_id: int | None = None,
           device: torch.device | str = "cpu", batch: int = 256,
           truncation_cutoff: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """num samples from G with z ~ N(0, I) drawn from `seed` (same seed, same weights: same samples)."""
    kwargs = truncation_kwargs(G, truncation, truncation_cutoff)
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
