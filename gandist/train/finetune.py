"""Fine-tuning from another run: `train.init_from` (weights only) and `model.freeze_d` (FreezeD, Mo et al. 2020).

init_from loads G, D and G-EMA (buffers included: StyleGAN2's w_avg, BN statistics, SN vectors) through the
checkpoint store's verified, weights_only loading, and nothing else: no optimizer state, step, data position or
watchdog history (stylegan2-ada's --resume=PKL, BigGAN-PyTorch's --load_weights). Both act on the plain modules
before the strategy wraps them, so every strategy (DDP's broadcast, ZeRO's engines) starts from the same weights
and the same frozen set, on the first start and on every resume alike.
"""
from __future__ import annotations

import logging
import os
import re

import yaml
from torch import nn

from gandist.checkpoint import CheckpointStore
from gandist.remote_run_dir import checkpoint_root
from gandist.errors import CheckpointError, ConfigError

log = logging.getLogger("gandist.train")
SUFFIX = re.compile(r"^(.+)@(\d+|best|latest)$")


def parse_init_from(spec: str) -> tuple[str, str]:
    """`RUN_DIR_OR_URL[@step|best]` -> (location, which); which is "latest", "best" or a step number."""
    m = SUFFIX.match(spec)
    return (m.group(1), m.group(2)) if m else (spec, "latest")


def source_store(location: str) -> CheckpointStore:
    """The checkpoint store of a run dir (its config.yaml may name checkpoint.url) or of a checkpoints URL."""
    cfg_path = os.path.join(location, "config.yaml")
    if os.path.isfile(cfg_path):
        url = (yaml.safe_load(open(cfg_path)) or {}).get("checkpoint", {}).get("url")
        return CheckpointStore(url or os.path.join(location, "checkpoints"))
    return CheckpointStore(location)


def first_mismatch(module: nn.Module, state: dict) -> str | None:
    """The first entry (in the module's order) whose name or shape differs from `state`, as a sentence."""
    for key, value in module.state_dict().items():
        if key not in state:
            return f"{key!r} {tuple(value.shape)} is not in the checkpoint"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"{key!r} has shape {tuple(state[key].shape)} in the checkpoint, {tuple(value.shape)} in this config"
    extra = [k for k in state if k not in module.state_dict()]
    return f"the checkpoint has {extra[0]!r}, which this config's net lacks" if extra else None


def init_from(cfg, run_dir: str, strategy, G: nn.Module, D: nn.Module, G_ema: nn.Module | None) -> int | None:
    """Load train.init_from's weights into G, D and G_ema unless this run dir resumes; returns the source step."""
    spec = cfg.train.init_from
    if not spec:
        return None
    own = CheckpointStore(checkpoint_root(cfg, run_dir))
    # rank 0 decides for all: a resumed run takes its own checkpoint, which holds everything init_from would give
    if strategy.broadcast_object(bool(own.valid_steps()) if strategy.rank == 0 else None):
        return None
    location, which = parse_init_from(spec)
    ckpt = source_store(location).load_newest(rank=None, which=which)
    if ckpt is None:
        raise CheckpointError(f"train.init_from={spec}: no valid checkpoint there (give a run dir or checkpoints URL)")
    arch = ckpt.manifest.get("arch")
    if arch not in (None, cfg.model.arch):
        raise CheckpointError(f"train.init_from={spec}: {ckpt.path} holds a {arch} model, model.arch is "
                              f"{cfg.model.arch}; fine-tune from a run of the same model.arch")
    nets = {"G": G, "D": D, "G_ema": G_ema}
    for name, net in nets.items():
        state = ckpt.shared.get(name) if name != "G_ema" else (ckpt.shared.get("G_ema") or ckpt.shared["G"])
        if net is None:
            continue
        problem = first_mismatch(net, state)
        if problem:
            raise CheckpointError(f"train.init_from={spec}: {name} does not match this config: {problem} "
                                  "(same model.* and data.resolution as the source run needed)")
        net.load_state_dict(state)
    if strategy.rank == 0:
        log.info("init_from: weights of %s (step %d); optimizer, step and data start fresh", ckpt.path, ckpt.step)
    return ckpt.step


def freeze_d(D: nn.Module, n: int) -> None:
    """FreezeD: D's first n blocks (its `freeze_blocks()`, input side first) stop training."""
    if n <= 0:
        return
    blocks = D.freeze_blocks()
    if n > len(blocks):
        raise ConfigError(f"model.freeze_d={n} but this D has {len(blocks)} blocks; use at most {len(blocks)}")
    for block in blocks[:n]:
        block.requires_grad_(False)


def d_block_count(model_cfg, data_cfg) -> int | None:
    """How many blocks the D of this model and data config has (built on the meta device, no data opened), or
    None when it cannot be told before the data is opened (the build then reports its own error)."""
    import torch

    from gandist.data.base import DataInfo
    from gandist.models.base import BuildContext
    from gandist.registry import ARCHS, resolve

    res = getattr(data_cfg, "resolution", None)
    channels = 3 if data_cfg.kind == "stacked_digits" else getattr(data_cfg, "channels", 1)
    info = DataInfo((2,)) if data_cfg.kind == "toy2d" else DataInfo((channels, res, res))
    try:
        with torch.device("meta"):
            _, D = resolve(ARCHS, model_cfg.arch, "model.arch")(model_cfg, info, BuildContext())
    except Exception:  # noqa: BLE001 - a config the builder refuses is reported by the builder at start
        return None
    return len(D.freeze_blocks())
