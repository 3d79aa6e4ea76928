"""What a config builds, without training or opening data: parameter counts (per block), resolution, FLOPs.

Models are built on the `meta` device (shapes only, no memory, no init), so even BigGAN-512 is counted in a second.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gandist.data.base import DataInfo
from gandist.models.base import BuildContext, count_params
from gandist.registry import ARCHS, resolve

_DIGITS_CLASSES = 10
_STACKED_CLASSES = 1000


def data_info_from_config(data_cfg) -> DataInfo:
    """The DataInfo a `data` section will produce, derived from the config alone (no files or buckets opened)."""
    kind = data_cfg.kind
    if kind == "toy2d":
        return DataInfo((2,), 0)
    if kind == "digits":
        return DataInfo((data_cfg.channels, data_cfg.resolution, data_cfg.resolution), _DIGITS_CLASSES)
    if kind == "stacked_digits":
        return DataInfo((3, data_cfg.resolution, data_cfg.resolution), _STACKED_CLASSES)
    if kind == "webdataset":
        return DataInfo((data_cfg.channels, data_cfg.resolution, data_cfg.resolution), data_cfg.num_classes)
    if kind == "folder":
        # class = sub-folder; listing names is cheap and opens no image (0 when the folder is not here)
        root = Path(data_cfg.path)
        classes = sum(1 for p in root.iterdir() if p.is_dir()) if root.is_dir() else 0
        return DataInfo((data_cfg.channels, data_cfg.resolution, data_cfg.resolution), classes)
    raise ValueError(f"data.kind {kind!r}: gandist.models.info does not know its shape; add it to data_info_from_config")


def build_models(cfg, info: DataInfo | None = None, meta: bool = True) -> tuple[nn.Module, nn.Module]:
    """(G, D) of an ExperimentConfig; on the meta device (shapes only) unless meta=False."""
    info = info or data_info_from_config(cfg.data)
    builder = resolve(ARCHS, cfg.model.arch, "model.arch")
    ctx = BuildContext(pack=cfg.augment.pack)
    if not meta:
        return builder(cfg.model, info, ctx)
    with torch.device("meta"):
        return builder(cfg.model, info, ctx)


def block_params(net: nn.Module) -> dict[str, int]:
    """Trainable parameters per block: each child of `blocks`, and each other top-level child."""
    counts: dict[str, int] = {}
    for name, child in net.named_children():
        inner = getattr(child, "blocks", None)
        if isinstance(child, nn.ModuleList) or isinstance(inner, nn.ModuleList):
            prefix, items = (name, child) if isinstance(child, nn.ModuleList) else (f"{name}.blocks", inner)
            rest = count_params(child) - count_params(items)
            for i, sub in enumerate(items):
                label = f"@{sub.res}px" if hasattr(sub, "res") else ""
                counts[f"{prefix}.{i}:{type(sub).__name__}{label}"] = count_params(sub)
            if rest:
                counts[f"{name}(other)"] = rest
        else:
            counts[name] = count_params(child)
    own = sum(p.numel() for p in net.parameters(recurse=False) if p.requires_grad)
    if own:
        counts["(own)"] = own
    return {k: v for k, v in counts.items() if v}


def flops_per_image(fn, *inputs) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward of `fn` on a batch of one, counted on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*inputs)
    return int(counter.get_total_flops())


def model_info(cfg, info: DataInfo | None = None) -> dict:
    """{"G": {params, blocks, resolution, gflops}, "D": {...}, "data": {shape, num_classes}} of a config."""
    info = info or data_info_from_config(cfg.data)
    G, D = build_models(cfg, info)
    G.eval(), D.eval()
    with torch.device("meta"):
        z = torch.zeros(1, G.z_dim)
        y = torch.zeros(1, dtype=torch.long) if G.num_classes else None
        x = torch.zeros(1, *info.shape)
        dy = y if getattr(D, "num_classes", 0) else None
        g_flops = flops_per_image(G, z, y)
        d_flops = flops_per_image(D, x, dy) if cfg.augment.pack == 1 else None
    out_res = info.shape[-1] if info.is_image else None
    return {
        "G": {"params": count_params(G), "blocks": block_params(G), "resolution": out_res,
              "flops_per_image": g_flops, "z_dim": G.z_dim, "num_classes": G.num_classes},
        "D": {"params": count_params(D), "blocks": block_params(D), "resolution": out_res,
              "flops_per_image": d_flops},
        "data": {"shape": list(info.shape), "num_classes": info.num_classes},
    }
