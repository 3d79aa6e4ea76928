"""Helpers of the model tests (imported as `modelkit`; pytest puts this folder on sys.path)."""
from __future__ import annotations

import torch

from gandist.config import load_config
from gandist.data.base import DataInfo
from gandist.models.base import BuildContext


def build(overrides: list[str], info: DataInfo, seed: int = 0):
    """(G, D) of a config given as `--set` overrides, on the CPU."""
    from gandist.registry import ARCHS, resolve

    cfg = load_config(None, overrides)
    torch.manual_seed(seed)
    return resolve(ARCHS, cfg.model.arch, "model.arch")(cfg.model, info, BuildContext())


# data.kind=digits: the config refuses an image model on (the default) toy2d points
TINY_STYLEGAN2 = ["data.kind=digits", "model.arch=stylegan2", "model.z_dim=16", "model.w_dim=16",
                  "model.mapping_layers=2", "model.d_mapping_layers=2", "model.channel_base=256", "model.channel_max=16"]
TINY_BIGGAN = ["data.kind=digits", "model.arch=biggan", "model.z_dim=16", "model.ch=8", "model.d_ch=8",
               "model.shared_dim=8", "model.attention=[16]"]

