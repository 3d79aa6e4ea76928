"""Project an image into a StyleGAN2 generator's W (or W+) space (Karras et al. 2020, StyleGAN2, appendix D).

From the paper: w starts at the mean of 10,000 mapped latents and is fitted with Adam (max lr 0.1, ramped up
linearly over the first 5% of the steps and down to zero with a cosine over the last 25%). Gaussian noise of
standard deviation 0.05 sigma_w t^2 is added to w, t falling from 1 to 0 over the first 75% of the steps (sigma_w^2:
the mean squared distance of a mapped w to the mean), to explore early. The per-layer noise maps n_i are fitted
too, renormalized to zero mean and unit variance after every step, and regularized (weight 1e5) by the squared
autocorrelation at a one-pixel shift, sum_{i,j} [(mean n_ij(x,y) n_ij(x-1,y))^2 + (mean n_ij(x,y) n_ij(x,y-1))^2],
over a pyramid n_i0 = n_i, n_i,j+1 = 2x2 average pool of n_ij, down to 8x8. The distance is LPIPS-VGG16 from the
user's weight files (images above 256 px area-averaged to 256, as the paper), or, offline and in tests, the digits
network's squared distance of unit-normalized features plus the pixels' mean squared error.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from gandist.errors import UserError

SPACES = ("w", "w+")


def noise_buffers(G) -> list[torch.Tensor]:
    """The constant noise maps [res, res] of G's synthesis layers (the buffers `noise_const`)."""
    return [buf for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")]


def noise_regularization(noises: list[torch.Tensor]) -> torch.Tensor:
    """Squared one-pixel autocorrelations (horizontal, vertical) of each map, at every scale down to 8x8."""
    reg = noises[0].new_zeros(())
    for n in noises:
        n = n[None, None]
        while True:
            reg = reg + (n * n.roll(1, dims=3)).mean().square() + (n * n.roll(1, dims=2)).mean().square()
            if n.shape[-1] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return reg


def lr_at(t: float, lr: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """The learning rate at fraction t of the steps: linear ramp-up over `rampup`, cosine ramp-down over `rampdown`."""
    down = min(1.0, (1.0 - t) / rampdown)
    return lr * (0.5 - 0.5 * math.cos(down * math.pi)) * min(1.0, t / rampup)


@torch.no_grad()
def w_statistics(G, class_id: int | None, samples: int = 10000, seed: int = 123) -> tuple[torch.Tensor, float]:
    """(w_avg [1, w_dim], sigma_w) of the mapping's outputs for `samples` latents (of one class when conditional)."""
    device = next(G.parameters()).device
    z = torch.randn(samples, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    y = torch.full((samples,), class_id, dtype=torch.long, device=device) if class_id is not None else None
    w = G.mapping(z, y)[:, 0, :].float()  # [N, w_dim]: every row of ws is the same w before truncation
    w_avg = w.mean(0, keepdim=True)
    return w_avg, float((w - w_avg).square().sum(1).mean().sqrt())


def check_generator(G, class_id: int | None) -> None:
    """A clear error for a generator without mapping + synthesis, or a class that it does not have."""
    if not (callable(getattr(G, "mapping", None)) and callable(getattr(G, "synthesis", None))):
        raise UserError("gandist project needs a StyleGAN2 generator (model.arch=stylegan2): it fits G's w")
    classes = getattr(G, "num_classes", 0) or 0
    if classes and class_id is None:
        raise UserError(f"this generator is conditional: pass --class (0..{classes - 1})")
    if class_id is not None and not 0 <= class_id < classes:
        raise UserError(f"--class {class_id}: the generator has {classes or 'no'} classes")


def project(G, target: torch.Tensor, distance, *, steps: int = 1000, space: str = "w", class_id: int | None = None,
            lr: float = 0.1, noise_factor: float = 0.05, noise_ramp: float = 0.75, noise_weight: float = 1e5,
            snapshots: int = 8, seed: int = 0, progress: bool = False) -> dict:
    """Fit w (space 'w': one [w_dim]; 'w+': one per layer) and the noise maps to `target` [1, C, H, W] in [-1, 1].

    Returns {'ws': [num_ws, w_dim] (the synthesis input), 'noise': {name: map}, 'image': [C, H, W],
    'start_image', 'distance': per step, 'final_distance', 'start_distance' (at w_avg, the start), 'progress':
    [(step, image)]}. G itself is not changed (a copy is fitted)."""
    if space not in SPACES:
        raise UserError(f"--space {space!r}: choose w or w+")
    check_generator(G, class_id)
    G = copy.deepcopy(G).float().eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    w_avg, w_std = w_statistics(G, class_id)
    w_opt = (w_avg.repeat(G.num_ws, 1) if space == "w+" else w_avg)[None].clone().requires_grad_(True)
    names = [name for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")]
    noises = noise_buffers(G)
    for buf in noises:  # N(0, I) start; fitted in place on the copy, so synthesis(noise_mode='const') uses them
        buf.copy_(torch.randn(buf.shape, generator=gen)).requires_grad_(True)  # CPU generator: same on any device

    def render(w: torch.Tensor) -> torch.Tensor:
        return G.synthesis(w.expand(1, G.num_ws, -1), noise_mode="const")

    with torch.no_grad():
        start_image = render(w_opt)
        start_distance = float(distance(start_image, target).sum())
    opt = torch.optim.Adam([w_opt, *noises], lr=lr, betas=(0.9, 0.999))
    every = max(1, steps // max(1, snapshots))
    shots, history = [], []
    steps_iter = range(steps)
    if progress:
        from tqdm import tqdm

        steps_iter = tqdm(steps_iter, desc="project", unit="step", file=sys.stderr, dynamic_ncols=True)
    for step in steps_iter:
        t = step / steps
        for group in opt.param_groups:
            group["lr"] = lr_at(t, lr)
        w_noise = w_std * noise_factor * max(0.0, 1.0 - t / noise_ramp) ** 2
        image = render(w_opt + torch.randn(w_opt.shape, generator=gen).to(w_opt.device) * w_noise)
        dist = distance(image, target).sum()
        loss = dist + noise_weight * noise_regularization(noises)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for buf in noises:
                buf.sub_(buf.mean()).mul_(buf.square().mean().rsqrt())
        history.append(float(dist.detach()))  # one host read a step: a CLI tool, not the training loop
        if progress and step % 10 == 0:
            steps_iter.set_postfix(distance=f"{history[-1]:.4g}")
        if snapshots and step % every == 0:
            shots.append((step, image.detach()[0].clone()))
    with torch.no_grad():
        final = render(w_opt)
        final_distance = float(distance(final, target).sum())
    shots.append((steps, final[0].clone()))
    return {"ws": w_opt.detach().expand(1, G.num_ws, -1)[0].clone(), "image": final[0],
            "noise": {n: b.detach().clone() for n, b in zip(names, noises)}, "start_image": start_image[0],
            "distance": history, "start_distance": start_distance, "final_distance": final_distance,
            "progress": shots}


def digits_distance(net):
    """Offline distance [N]: squared distance of the unit-normalized digits features (0..4, as LPIPS normalizes its
    activations: a trained net's raw features would drown the pixels) plus the pixels' mean squared error."""
    def distance(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f0, f1 = F.normalize(net(image)[0], dim=1, eps=1e-10), F.normalize(net(target)[0], dim=1, eps=1e-10)
        return (f0 - f1).square().sum(1) + (image - target).square().flatten(1).mean(1)

    return distance


def lpips_distance(net):
    """LPIPS distance [N], images above 256 px area-averaged to 256 first (the paper's projector does so)."""
    from gandist.eval.lpips import downsample_to

    def distance(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return net(downsample_to(image), downsample_to(target))

    return distance


# PIL modes by colour bands (alpha dropped); P (palette) decodes to RGB
MODE_CHANNELS = {"1": 1, "L": 1, "LA": 1, "I": 1, "I;16": 1, "F": 1, "RGB": 3, "RGBA": 3, "RGBX": 3, "P": 3,
                 "CMYK": 3, "YCbCr": 3}


def load_target(path: str, resolution: int, channels: int) -> tuple[torch.Tensor, str | None]:
    """([1, C, R, R] in [-1, 1], a note when resized) of the image to project; its channels must be G's."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from gandist.data.folders import resize_and_centre_crop

    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: image not found; give a PNG/JPEG file to project")
    try:
        with Image.open(file) as im:
            im.load()
            mode, size = im.mode, im.size
            have = MODE_CHANNELS.get(mode)
            if have != channels:
                kind = {1: "grey", 3: "RGB"}
                raise UserError(f"{path}: has {have or 'an unknown number of'} channels (PIL mode {mode}) but the generator makes "
                                f"{kind[channels]} images ({channels} channel{'s' * (channels > 1)}); convert it "
                                f"first, e.g. PIL's Image.open(...).convert('{'L' if channels == 1 else 'RGB'}')")
            im = resize_and_centre_crop(im.convert("L" if channels == 1 else "RGB"), resolution)
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"{path}: cannot read the image ({err}); give a PNG/JPEG file") from None
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    note = None
    if size != (resolution, resolution):
        crop = " and centre-cropped" if size[0] != size[1] else ""
        note = f"{path}: resized from {size[0]}x{size[1]} to the generator's {resolution}x{resolution}{crop}"
    return (torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0)[None], note
