"""Config of losses, penalties and augmentations."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from gandist.configbase import Section

DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")
ADA_GROUPS = ("blit", "geom", "color")


def parse_names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """'a, b' -> ['a', 'b'] (empty entries dropped); raises ValueError naming an unknown entry and the allowed ones.

    Here, free of torch, so that config validation and the augmentations (augment.py, ada.py) share one parser."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(allowed)}")
    return names


def _check_policies(policy: str) -> str:
    """Validate a comma-separated DiffAugment policy string."""
    parse_names(policy, DIFFAUGMENT_POLICIES, "DiffAugment policy")
    return policy


class TopKConfig(Section):
    """Top-k training: G's loss over the k fakes D rates highest, chosen over the global batch."""

    gamma: float = Field(0.99, gt=0, le=1, description="k shrinks by this factor every `kimg` thousand images.")
    min_fraction: float = Field(0.5, gt=0, le=1, description="k never falls below this fraction of the batch (nu).")
    kimg: float = Field(60.0, gt=0, description="Thousands of images per decay of k (an epoch of a 60k-image set).")


class LossConfig(Section):
    """The adversarial loss."""

    kind: Literal["ns", "hinge", "wasserstein", "ls", "relativistic"] = Field(
        "ns", description="ns: non-saturating logistic; hinge; wasserstein; ls: least squares; relativistic: RaGAN (average)."
    )
    relativistic_base: Literal["ns", "hinge", "ls"] = Field("ns", description="Base loss of the relativistic average GAN.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="One-sided label smoothing of D's real targets (ns only).")
    topk: TopKConfig | None = Field(
        None, description="Top-k training (Sinha et al. 2020): G's loss over the best-rated fakes (null: off)."
    )
    aux_weight: float = Field(1.0, ge=0, description=(
        "ACGAN (model.d_conditioning=auxiliary): weight of the class cross-entropy, on real labels in D's loss and on "
        "the sampled labels in G's."))


class _PenaltyBase(Section):
    weight: float = Field(..., ge=0, description="Multiplier of the penalty.")
    every: int = Field(1, ge=1, description="Lazy regularization: apply every k steps with weight*k (StyleGAN2).")


class GradientPenaltyConfig(_PenaltyBase):
    """WGAN-GP: (||grad D(x_hat)|| - center)^2 on interpolates."""

    kind: Literal["gp"] = Field("gp", description="Selects this penalty in the penalties list.")
    weight: float = Field(10.0, ge=0, description="Multiplier (lambda).")
    center: float = Field(1.0, ge=0, description="Target gradient norm.")


class DraganConfig(_PenaltyBase):
    """DRAGAN: gradient penalty on perturbed real samples."""

    kind: Literal["dragan"] = Field("dragan", description="Selects this penalty in the penalties list.")
    weight: float = Field(10.0, ge=0, description="Multiplier (lambda).")
    center: float = Field(1.0, ge=0, description="Target gradient norm.")
    perturb_std: float = Field(0.5, gt=0, description="Perturbation scale relative to the data std.")


class R1Config(_PenaltyBase):
    """R1: gamma/2 * ||grad D(x_real)||^2."""

    kind: Literal["r1"] = Field("r1", description="Selects this penalty in the penalties list.")
    weight: float = Field(10.0, ge=0, description="gamma: the penalty is gamma/2 * E||grad D(x)||^2.")


class WeightClipConfig(_PenaltyBase):
    """WGAN weight clipping of D's parameters to [-clip, clip] after every D step."""

    kind: Literal["weight_clip"] = Field("weight_clip", description="Selects this penalty in the penalties list.")
    weight: float = Field(1.0, ge=0, description="Unused (clipping has no weight); kept for uniformity.")
    clip: float = Field(0.01, gt=0, description="Clip value c.")


class SpectralRegConfig(_PenaltyBase):
    """SR-GAN spectral regularization (Liu et al. 2019): lift the top singular values of D's SN layers to sigma_1."""

    kind: Literal["spectral_reg"] = Field("spectral_reg", description="Selects this penalty in the penalties list.")
    weight: float = Field(1.0, ge=0, description="Unused (the compensation has no weight); kept for uniformity.")
    every: int = Field(5, ge=1, description=(
        "Compensate after the D steps of every k-th G step (the reference code: 5); not a lazy loss interval."))
    fraction: float = Field(0.5, gt=0, le=1, description=(
        "i0 as a fraction of each weight matrix's rank: the largest i0 singular values are lifted to sigma_1 "
        "(the reference code: half)."))


class ConsistencyConfig(_PenaltyBase):
    """Balanced consistency regularization (bCR, Zhao et al. 2021); `cr` is CR on reals only (Zhang et al. 2020)."""

    kind: Literal["bcr", "cr"] = Field("bcr", description="bcr: real and fake terms; cr: the real term only.")
    weight: float = Field(10.0, ge=0, description="lambda of both terms unless weight_real / weight_fake are set.")
    weight_real: float | None = Field(None, ge=0, description="bcr: lambda_real (default: weight).")
    weight_fake: float | None = Field(None, ge=0, description="bcr: lambda_fake (default: weight; cr: always 0).")
    augment: str = Field("translation,cutout", description="DiffAugment policies used as the consistency transform.")

    @field_validator("augment")
    @classmethod
    def _known_policies(cls, policy: str) -> str:
        if not policy.strip():
            raise ValueError("bcr needs at least one transform: color, translation or cutout")
        return _check_policies(policy)


class LatentConsistencyConfig(_PenaltyBase):
    """zCR (Zhao et al. 2021): D consistent, G sensitive under a small latent perturbation; zCR + bCR is ICR."""

    kind: Literal["zcr"] = Field("zcr", description="Selects this penalty in the penalties list.")
    weight: float = Field(5.0, ge=0, description="lambda_dis: weight of E(D(G(z)) - D(G(z + dz)))^2 in D's loss.")
    g_weight: float = Field(0.5, ge=0, description="lambda_gen: weight of -E||G(z) - G(z + dz)||^2 in G's loss.")
    sigma: float = Field(0.05, gt=0, description="Std of the latent perturbation dz.")


class LeCamConfig(_PenaltyBase):
    """LeCam regularization (Tseng et al. 2021) with EMAs of D's mean real and fake logits over the global batch."""

    kind: Literal["lecam"] = Field("lecam", description="Selects this penalty in the penalties list.")
    weight: float = Field(0.3, ge=0, description="lambda_LC.")
    decay: float = Field(0.99, ge=0, lt=1, description="Decay of the logit EMAs (StudioGAN: 0.99).")
    start_step: int = Field(0, ge=0, description="The penalty is 0 before this step (the EMAs are updated all along).")


class PathLengthConfig(_PenaltyBase):
    """StyleGAN2 path-length regularization on G."""

    kind: Literal["path_length"] = Field("path_length", description="Selects this penalty in the penalties list.")
    weight: float = Field(2.0, ge=0, description="pl_weight.")
    every: int = Field(4, ge=1, description="Lazy interval (StyleGAN2: 4).")
    decay: float = Field(0.01, gt=0, lt=1, description="Decay of the running mean path length.")
    batch_shrink: int = Field(2, ge=1, description="Use batch/shrink samples for the penalty.")


class OrthoConfig(_PenaltyBase):
    """BigGAN orthogonal regularization of G's (or D's) weights (off-diagonal only)."""

    kind: Literal["ortho"] = Field("ortho", description="Selects this penalty in the penalties list.")
    weight: float = Field(1e-4, ge=0, description="beta.")
    net: Literal["g", "d"] = Field("g", description="The net regularized: g (BigGAN's G_ortho) or d (its D_ortho).")


class CutMixConfig(_PenaltyBase):
    """U-Net GAN's CutMix augmentation and consistency regularization of the U-Net D (Schonfeld et al. 2020)."""

    kind: Literal["cutmix"] = Field("cutmix", description="Selects this penalty in the penalties list.")
    weight: float = Field(1.0, ge=0, description="lambda of the consistency term (the paper: 1).")
    prob: float = Field(0.5, ge=0, le=1, description=(
        "Probability of a CutMix D step after the warm-up (the paper: 0.5)."))
    warmup_steps: int = Field(1000, ge=0, description=(
        "Steps over which the probability ramps linearly from 0 to prob (0: prob from the start)."))


PenaltyConfig = Annotated[
    Union[GradientPenaltyConfig, DraganConfig, R1Config, WeightClipConfig, SpectralRegConfig, ConsistencyConfig, LatentConsistencyConfig,
          LeCamConfig, PathLengthConfig, OrthoConfig, CutMixConfig],
    Field(discriminator="kind"),
]


class InstanceNoiseConfig(Section):
    """Gaussian noise added to D's inputs, annealed linearly to zero."""

    std: float = Field(0.0, ge=0, description="Initial noise std (0: off).")
    anneal_steps: int = Field(0, ge=0, description="Steps over which std decays linearly to 0 (0: constant).")


class AdaConfig(Section):
    """Adaptive discriminator augmentation (Karras et al. 2020): p from the sign of D on real images."""

    p: float = Field(0.0, ge=0, le=1, description="Initial augmentation probability (fixed when target is null).")
    target: float | None = Field(0.6, gt=-1, lt=1, description="Target of r_t = E[sign D(real)]; null: p stays fixed.")
    interval: int = Field(4, ge=1, description="Steps between adjustments of p.")
    kimg: float = Field(500.0, gt=0, description="Thousands of images over which p can move from 0 to 1.")
    pipeline: str = Field("blit,geom,color", description="Transform groups: blit, geom, color (comma-separated).")

    @field_validator("pipeline")
    @classmethod
    def _known_groups(cls, pipeline: str) -> str:
        names = [p.strip() for p in pipeline.split(",") if p.strip()]
        if not names or any(n not in ADA_GROUPS for n in names):
            raise ValueError(f"augment.ada.pipeline={pipeline!r}: give one or more of {', '.join(ADA_GROUPS)}")
        return pipeline


class AugmentConfig(Section):
    """Augmentations applied to D's inputs (real and fake alike)."""

    diffaugment: str = Field("", description="Comma-separated DiffAugment policies: color, translation, cutout ('' off).")
    instance_noise: InstanceNoiseConfig = Field(default_factory=InstanceNoiseConfig, description="Instance noise.")
    pack: int = Field(1, ge=1, description="PacGAN: D judges packs of this many samples (1: off).")
    ada: AdaConfig | None = Field(None, description="Adaptive discriminator augmentation of every D input (null: off).")
    translation_ratio: float = Field(
        0.125, ge=0, le=0.5, description="DiffAugment translation: max shift as a fraction of the image side."
    )
    cutout_ratio: float = Field(
        0.5, ge=0, le=1, description="DiffAugment cutout: box side as a fraction of the image side."
    )

    @field_validator("diffaugment")
    @classmethod
    def _known_policies(cls, policy: str) -> str:
        return _check_policies(policy)
