"""Python API for notebooks and tools: `gandist.load_run(run_dir)`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import yaml

from gandist.checkpoint import CheckpointStore
from gandist.errors import CheckpointError, UserError


@dataclass
class Run:
    """A trained run: nets in eval mode, the step and the config."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module | None
    step: int
    config: Any
    run_dir: str
    checkpoint: str
    manifest: dict
    info: Any

    @property
    def sampler(self) -> torch.nn.Module:
        """The generator to sample from: the EMA one when there is one."""
        return self.G_ema if self.G_ema is not None else self.G


def load_run(run_dir: str, checkpoint: str | int = "latest", device: str = "cpu") -> Run:
    """Load a run's nets from a checkpoint ("latest", "best" or a step) on `device` (CPU by default)."""
    from gandist.config import config_from_dict
    from gandist.data.base import DataInfo
    from gandist.models.base import BuildContext
    from gandist.registry import ARCHS, resolve

    from gandist.remote_run_dir import checkpoint_root, join, read_run_file

    cfg_path = join(run_dir, "config.yaml")
    text = read_run_file(run_dir, "config.yaml")  # a folder or a URL run dir
    if text is None:
        raise UserError(f"{run_dir}: not a gandist run dir (no config.yaml); give the --run-dir of a training run")
    cfg = config_from_dict(yaml.safe_load(text) or {}, cfg_path)
    store = CheckpointStore(checkpoint_root(cfg, run_dir), cfg.checkpoint.keep_last)
    ckpt = store.load_newest(rank=None, which=str(checkpoint))
    if ckpt is None:
        raise CheckpointError(f"{store.url}: no valid checkpoint yet (train longer than checkpoint.every steps)")
    di = ckpt.shared["data_info"]
    info = DataInfo(tuple(di["shape"]), di["num_classes"], tuple(di["value_range"]))
    G, D = resolve(ARCHS, cfg.model.arch, "model.arch")(cfg.model, info, BuildContext(None, cfg.augment.pack))
    G_ema = None
    if ckpt.shared.get("G_ema") is not None:
        G_ema = resolve(ARCHS, cfg.model.arch, "model.arch")(cfg.model, info, BuildContext(None, cfg.augment.pack))[0]
    for name, net in (("G", G), ("D", D), ("G_ema", G_ema)):
        if net is None:
            continue
        try:
            net.load_state_dict(ckpt.shared[name])
        except RuntimeError as err:  # shapes or keys that this config's nets do not have
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(f"{ckpt.path}/shared.pt: {name} does not fit {cfg_path} ({first})") from None
    nets = [n for n in (G, D, G_ema) if n is not None]
    for n in nets:
        n.to(device).eval().requires_grad_(False)
    return Run(G, D, G_ema, ckpt.step, cfg, run_dir, ckpt.path, ckpt.manifest, info)
