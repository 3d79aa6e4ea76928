"""Cross-section checks: what one section asks of another (batch and pack, data and arch, penalties and strategy,
techniques such as ACGAN and progressive growing).

config.py holds the sections and their wiring; `check_all` runs these in order from ExperimentConfig's one
after-validator. The module stays free of torch at import (a strategy or penalty class is resolved only when a
config names one that needs asking). Each check raises ValueError with one line naming the keys and the fix, which
config validation turns into a ConfigError.
"""
from __future__ import annotations

from gandist.optim import ADAM_MOMENTS, UNROLLED_EXACT_KINDS, check_impl


def check_all(cfg) -> None:
    """Every cross-section check, in the order a user meets them (the first failing one is reported)."""
    for check in (check_pack_divides_batch, check_topk_keeps_samples, check_data_fits, check_penalties_fit,
                  check_freeze_d, check_optimizers, check_unrolled, check_auxiliary_d, check_progressive,
                  check_pixel_d, check_pyramid_d, check_penalties_fit_strategy, check_penalty_classes):
        check(cfg)


def _strategy(cfg):
    from gandist.strategies import strategy_class  # resolving imports torch: only for a check that asks

    return strategy_class(cfg.distributed.strategy)


def _spectral_norm(cfg) -> bool:
    return cfg.model.arch.startswith("biggan") or getattr(cfg.model, "spectral_norm", False)


def check_pack_divides_batch(cfg) -> None:
    """PacGAN stacks augment.pack samples into one D input: the batch must split into whole packs."""
    if cfg.train.batch_size % cfg.augment.pack:
        raise ValueError(f"augment.pack: {cfg.augment.pack} does not divide train.batch_size {cfg.train.batch_size}")


def check_topk_keeps_samples(cfg) -> None:
    """Top-k G training keeps a fraction of each global micro-batch: at least one sample, of a per-fake loss."""
    topk = cfg.loss.topk
    if topk is None:
        return
    if cfg.loss.kind == "relativistic":
        raise ValueError("loss.topk with loss.kind=relativistic: the relativistic G loss compares with the mean "
                         "real logit, not per fake; use loss.kind=ns, hinge, wasserstein or ls with top-k")
    micro = cfg.train.batch_size // cfg.optim.accumulation  # k is chosen over each global micro-batch
    if int(topk.min_fraction * micro) < 1:
        raise ValueError(f"loss.topk.min_fraction={topk.min_fraction} keeps no sample of a global micro-batch of "
                         f"{micro} (train.batch_size / optim.accumulation); raise loss.topk.min_fraction to at "
                         f"least {1 / micro:.3g} or the batch size")


def check_data_fits(cfg) -> None:
    """What the builders and the first step would trip over, said before a run dir is written: toy2d gives 2-D
    points, every other source images."""
    points = cfg.data.kind == "toy2d"
    arch = cfg.model.arch
    if points and arch != "mlp":
        raise ValueError(f"model.arch={arch} needs image data but data.kind=toy2d gives 2-D points; use "
                         "model.arch=mlp for toy2d, or an image source (data.kind=digits)")
    if not points and arch == "mlp":
        raise ValueError(f"model.arch=mlp is for 2-D points but data.kind={cfg.data.kind} gives images; use "
                         "data.kind=toy2d, or an image model (model.arch=dcgan, resnet, biggan or stylegan2)")
    if points and cfg.augment.diffaugment:
        raise ValueError(f"augment.diffaugment={cfg.augment.diffaugment!r} transforms images but data.kind=toy2d "
                         "gives 2-D points; set augment.diffaugment='' (instance noise and pack do fit points)")
    if points and cfg.augment.ada is not None:
        raise ValueError("augment.ada transforms images (flips, rotations, color) but data.kind=toy2d gives 2-D "
                         "points; remove augment.ada (instance noise and pack do fit points)")


def check_penalties_fit(cfg) -> None:
    """Each penalty against the data, the arch and the strategy it would run under."""
    points = cfg.data.kind == "toy2d"
    arch = cfg.model.arch
    for i, p in enumerate(cfg.penalties):
        if p.kind in ("lecam", "zcr") and p.every > 1:
            raise ValueError(f"penalties.{i}: {p.kind} uses the D and G phases' own logits and has no lazy form "
                             f"(every: {p.every}); set every: 1 or drop the key")
        if p.kind in ("bcr", "cr") and points:
            raise ValueError(f"penalties.{i}: {p.kind}'s transforms ({p.augment}) need images but data.kind=toy2d "
                             "gives 2-D points; remove bcr from penalties (gp, dragan or r1 fit points)")
        if p.kind == "weight_clip" and p.every > 1:
            raise ValueError(f"penalties.{i}: weight_clip clamps D's weights after every D step and has no lazy "
                             f"form (every: {p.every}); set every: 1 or drop the key")
        if p.kind == "weight_clip" and _strategy(cfg).keeps_master_weights:
            raise ValueError(f"penalties.{i}: weight_clip clamps D's module weights, which distributed.strategy="
                             f"{cfg.distributed.strategy} overwrites from its optimizer's own fp32 copy; use "
                             "distributed.strategy=ddp, or a gradient penalty (gp) instead of clipping")
        if p.kind == "weight_clip" and _spectral_norm(cfg):
            # D divides the clipped weights by their top singular value: the clip bounds nothing
            raise ValueError(f"penalties.{i}: weight_clip on a spectrally normalized D (model.arch={arch}) is "
                             "undone by the normalization; set model.spectral_norm=false (mlp, dcgan, resnet), or "
                             "keep spectral norm and drop weight_clip")
        if p.kind == "ortho" and p.net == "d" and _strategy(cfg).partitions_params:
            # the D phases hand penalties D's module, whose weights ZeRO-3 holds partitioned
            raise ValueError(f"penalties.{i}: ortho with net: d needs D's whole weights, which distributed."
                             f"strategy={cfg.distributed.strategy} partitions; use zero2 or ddp, or net: g")
        if p.kind == "path_length" and arch != "stylegan2":
            raise ValueError(f"penalties.{i}: path_length regularizes StyleGAN2's mapping/synthesis, which "
                             f"model.arch={arch} does not have; remove it from penalties or use "
                             "model.arch=stylegan2")


def check_freeze_d(cfg) -> None:
    """FreezeD: whole frozen weights, and no more blocks frozen than D has."""
    n = cfg.model.freeze_d
    if not n:
        return
    from gandist.train.finetune import d_block_count  # builds D on the meta device: only with freeze_d

    count = d_block_count(cfg.model, cfg.data)
    if count is not None and n > count:
        raise ValueError(f"model.freeze_d={n} but the D of model.arch={cfg.model.arch} at this data.resolution "
                         f"has {count} blocks; set model.freeze_d to at most {count}")


def check_optimizers(cfg) -> None:
    """Optimizer kinds and kernels, and train.compile, against the nets and the strategy."""
    check_impl(cfg.optim.impl, {"g": cfg.optim.g.kind, "d": cfg.optim.d.kind})
    strategy = cfg.distributed.strategy
    if cfg.train.compile and _spectral_norm(cfg):
        # measured on CPU (torch 2.13, tiny DCGAN): the power iteration's in-place update of the SN buffers
        # inside the compiled forward breaks the backward ("modified by an inplace operation")
        raise ValueError(f"train.compile with a spectrally normalized net (model.arch={cfg.model.arch}): SN's "
                         "in-place buffer updates break the compiled backward; set model.spectral_norm=false "
                         "or train.compile=false")
    for net in ("g", "d"):
        kind = getattr(cfg.optim, net).kind
        if kind in ADAM_MOMENTS:  # every strategy's checkpoints carry these: asking it (imports torch) is not needed
            continue
        allowed = _strategy(cfg).optimizer_kinds
        if allowed is not None and kind not in allowed:
            raise ValueError(f"optim.{net}.kind={kind} under distributed.strategy={strategy}: gandist's ZeRO "
                             "checkpoints carry Adam's moments only; use kind adam or adamw, or "
                             "distributed.strategy=ddp")
    if cfg.train.compile and not _strategy(cfg).compiles_nets:
        raise ValueError(f"train.compile under distributed.strategy={strategy}: gandist compiles only the "
                         "plain nets of single/ddp (ZeRO-3 gathers partitioned weights in forward hooks that "
                         "graph capture does not see; ZeRO-1/2 untested); set train.compile=false or use ddp")


def check_unrolled(cfg) -> None:
    """Unrolled GAN (train/unrolled.py): D's state restored after the look-ahead; the exact form's update rules."""
    o = cfg.optim
    if not o.unrolled_steps:
        return
    keys = f"optim.unrolled_steps={o.unrolled_steps} (optim.unrolled_form={o.unrolled_form})"
    strategy = _strategy(cfg)
    if not strategy.restores_net_state:
        # zero3 partitions D's weights: no whole D to snapshot and put back, nor to differentiate twice through
        raise ValueError(f"{keys} under distributed.strategy={cfg.distributed.strategy}: D's weights are "
                         "partitioned, so the look-ahead can neither snapshot and put back D (copy) nor differentiate "
                         "through its updates (exact); use zero2, zero1, ddp or single")
    if o.unrolled_form == "copy":
        return
    if strategy.keeps_master_weights and cfg.train.amp != "off":
        raise ValueError(f"{keys} under distributed.strategy={cfg.distributed.strategy} with train.amp="
                         f"{cfg.train.amp}: the exact form updates the module's weights, which DeepSpeed holds in "
                         "low precision beside its fp32 masters; use train.amp=off or optim.unrolled_form=copy")
    if o.d.kind not in UNROLLED_EXACT_KINDS:
        raise ValueError(f"{keys} writes D's update out differentiably for optim.d.kind in "
                         f"{', '.join(UNROLLED_EXACT_KINDS)}, not {o.d.kind}; use one of those or "
                         "optim.unrolled_form=copy")
    if o.accumulation > 1:
        raise ValueError(f"{keys} with optim.accumulation={o.accumulation}: G's micro-batches would each "
                         "backpropagate through one shared look-ahead graph; use optim.accumulation=1 or "
                         "optim.unrolled_form=copy")
    if cfg.train.amp == "fp16":
        raise ValueError(f"{keys} with train.amp=fp16: the look-ahead gradients are taken without the loss "
                         "scaler and underflow in fp16; use train.amp=bf16 or off, or optim.unrolled_form=copy")
    if cfg.train.compile:
        raise ValueError(f"{keys} with train.compile: the look-ahead differentiates through D's gradients, and "
                         "torch.compile'd nets have no double backward; set train.compile=false or "
                         "optim.unrolled_form=copy")
    if not strategy.supports_double_backward:
        raise ValueError(f"{keys} differentiates through D's gradients, which distributed.strategy="
                         f"{cfg.distributed.strategy} cannot; use optim.unrolled_form=copy")


def check_auxiliary_d(cfg) -> None:
    """ACGAN's class head needs labels: a conditional model on labelled data, D seeing one sample at a time."""
    if getattr(cfg.model, "d_conditioning", "projection") != "auxiliary":
        return
    unlabelled = cfg.data.kind == "webdataset" and cfg.data.num_classes == 0
    if not cfg.model.conditional or unlabelled:
        why = "model.conditional=false" if not cfg.model.conditional else "data.num_classes=0 (unconditional data)"
        raise ValueError(f"model.d_conditioning=auxiliary trains a class head on the labels, but {why}; use "
                         "labelled data with model.conditional=true, or model.d_conditioning=projection")
    if cfg.augment.pack > 1:
        raise ValueError(f"model.d_conditioning=auxiliary needs one label per D input, but augment.pack="
                         f"{cfg.augment.pack} stacks samples (D then sees no labels); set augment.pack=1")


def check_progressive(cfg) -> None:
    """ProGAN: a start below the data's resolution; strategies whose weights and Adam state the loop can touch."""
    grow = getattr(cfg.model, "progressive", None)
    if grow is None or not grow.enabled:
        return
    final = getattr(cfg.data, "resolution", None)
    if final is not None and grow.start_resolution >= final:
        raise ValueError(f"model.progressive.start_resolution={grow.start_resolution} is not below data.resolution="
                         f"{final}: nothing would grow; start lower (8) or set model.progressive.enabled=false")
    strategy = cfg.distributed.strategy
    if _strategy(cfg).partitions_params:
        # the lower levels' heads and the unused higher stages change from level to level, and ZeRO-3 fetches
        # partitioned weights by a trace of the modules each forward ran; it is not tested with growing nets
        raise ValueError(f"model.progressive under distributed.strategy={strategy} is not supported (the layers a "
                         "forward runs change at every level); use ddp, zero1 or zero2")
    if grow.reset_optim and not _strategy(cfg).clears_optimizer_state:
        raise ValueError(f"model.progressive.reset_optim clears torch Adam's moments, which distributed.strategy="
                         f"{strategy} keeps inside DeepSpeed's partitioned optimizer; use ddp, or reset_optim=false")


def check_pixel_d(cfg) -> None:
    """U-Net D: one logit per pixel of one image (toy2d points are refused by check_data_fits)."""
    if cfg.model.arch == "unet" and cfg.augment.pack > 1:
        raise ValueError(f"model.arch=unet judges each pixel of one image, but augment.pack={cfg.augment.pack} "
                         "stacks several images into one D input; set augment.pack=1")


def check_pyramid_d(cfg) -> None:
    """MSG-GAN: D takes G's images at every scale, which the D-input augmentations transform at one scale only."""
    if cfg.model.arch != "msggan":
        return
    aug = cfg.augment
    on = [k for k, v in (("augment.diffaugment", aug.diffaugment), ("augment.ada", aug.ada is not None),
                         ("augment.pack", aug.pack > 1), ("augment.instance_noise.std", aug.instance_noise.std > 0))
          if v]
    if on:
        raise ValueError(f"model.arch=msggan feeds D G's image at every scale, which {', '.join(on)} would not "
                         "transform alike (it sees one image batch); turn it off for msggan")


def check_penalties_fit_strategy(cfg) -> None:
    """ZeRO-3 re-partitions each layer's weights after its forward and gathers them again for the first-order
    backward only; a gradient penalty differentiates through a gradient (create_graph), and that second backward
    finds the weights it saved partitioned (DeepSpeed fails with a size mismatch)."""
    if not cfg.penalties:
        return
    from gandist.registry import PENALTIES, resolve  # resolving imports torch: only with penalties to ask

    strategy = _strategy(cfg)
    classes = [resolve(PENALTIES, p.kind, "penalties.kind") for p in cfg.penalties]
    twice = [p.kind for p, cls in zip(cfg.penalties, classes) if cls.double_backward]
    if twice and cfg.train.compile:  # measured: the tiny StyleGAN2's lazy R1 step fails at its first double backward
        raise ValueError(f"train.compile with penalties {', '.join(twice)}: they differentiate through a gradient "
                         "(create_graph) of the compiled net, and torch.compile's AOT autograd does not support "
                         "double backward (both backends); set train.compile=false or drop those penalties")
    if twice and not strategy.supports_double_backward:
        raise ValueError(
            f"penalties: {', '.join(twice)} differentiate(s) twice, which DeepSpeed ZeRO-3 cannot do "
            "(distributed.strategy=zero3 re-partitions the weights the second backward needs); use "
            "distributed.strategy=zero2 (gradients and optimizer state partitioned, weights whole) or drop them")
    if not strategy.steps_params_without_grad:
        partial = [i for i, (p, cls) in enumerate(zip(cfg.penalties, classes))
                   if p.every > 1 and not cls.reaches_every_param]
        if partial:
            raise ValueError(
                f"{', '.join(f'penalties.{i}' for i in partial)}: a lazy (every > 1) {cfg.penalties[partial[0]].kind} "
                f"phase leaves some parameters without a gradient, which distributed.strategy="
                f"{cfg.distributed.strategy} would not step (every other strategy steps them with a zero "
                "gradient); use every: 1 for it or distributed.strategy=zero2")


def check_penalty_classes(cfg) -> None:
    """A penalty class's own cross-section refusals (its `check_config`, e.g. spectral_reg needs SN layers in D)."""
    from gandist.errors import ConfigError
    from gandist.registry import PENALTIES, resolve

    for i, p in enumerate(cfg.penalties):
        check = getattr(resolve(PENALTIES, p.kind, f"penalties.{i}.kind"), "check_config", None)
        if check is None:
            continue
        try:
            check(cfg, i)
        except ConfigError as e:  # validators speak ValueError; config_from_dict makes it one ConfigError line
            raise ValueError(str(e)) from None
